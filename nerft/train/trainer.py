"""The HF Trainer, taught three things: answer-only loss (or the tagging head's), F1
validation, atomic checkpoints."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Trainer

from nerft.data.example import Example
from nerft.eval.metrics import score_corpus
from nerft.infer.generate import DecodeOptions
from nerft.infer.predict import decoder_for, predict_rows
from nerft.task.prompt import Task
from nerft.train.collate import answer_only_loss
from nerft.train import ranks
from nerft.runs.run_dir import RunDir


@dataclass
class Validation:
    """The model's answers on a fixed validation subset (greedy generation, or the tagging
    head's tags: `decoder_for`), scored as `nerft eval` scores them."""

    task: Task
    tokenizer: object
    examples: list[Example]
    batch_size: int = 16
    log_predictions: int = 5
    constrained: bool = True
    last_predictions: list[dict] = field(default_factory=list)

    def __call__(self, model) -> dict[str, float]:
        # A generator per evaluation: its prefix cache belongs to these weights.
        preds = predict_rows(decoder_for(model, self.tokenizer, self.task),
                             [(ex.id, ex.text) for ex in self.examples],
                             DecodeOptions(batch_size=self.batch_size, constrained=self.constrained))
        scores = score_corpus([ex.entities for ex in self.examples], [p.entities for p in preds],
                              "strict")
        micro = scores.micro
        self.last_predictions = [
            {"text": ex.text, "answer": p.answer,
             "gold": [(s.text, s.label) for s in ex.entities]}
            for ex, p in zip(self.examples[:self.log_predictions], preds)]
        # Per label too: a label with few examples can stay at 0 while the micro F1 rises.
        per_label = {f"{k}/{label}": getattr(c, k) for label, c in scores.per_label.items()
                     for k in ("f1", "support")}
        return {"precision": micro.precision, "recall": micro.recall, "f1": micro.f1,
                "parse_rate": sum(p.parsed.well_formed for p in preds) / max(len(preds), 1),
                **per_label}


class NerTrainer(Trainer):
    def __init__(self, *args, validation: Validation | None = None, run_dir: Path,
                 early_stopping_patience: int | None = None, loss=answer_only_loss, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.n_gpu > 1:
            # nn.DataParallel splits every input along dim 0, `logits_to_keep` indices too.
            raise ValueError(f"{self.args.n_gpu} GPUs in one process (DataParallel) are not "
                             "supported: launch one process per GPU with torchrun or accelerate, "
                             "or set CUDA_VISIBLE_DEVICES to one GPU")
        self.validation = validation
        self.loss = loss  # answer_only_loss, or the tagging head's `tagging_loss`
        self.run = RunDir(Path(run_dir))
        self.patience = early_stopping_patience
        self.stopped_early_at: int | None = None
        # Our loss is already a sum over the accumulated batch divided by its supervised-token
        # count (`num_items_in_batch`), so the Trainer must not divide it again.
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, _ = self.loss(model, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # `num_items_in_batch` counts the supervised tokens of every process while DDP
            # averages gradients over processes: scale back up, as Trainer.compute_loss does.
            loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, _ = self.loss(model, inputs)
        return loss.detach(), None, None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        loader = self.get_eval_dataloader(eval_dataset)
        output = self.evaluation_loop(loader, description="Validation", prediction_loss_only=True,
                                      metric_key_prefix=metric_key_prefix)
        metrics = dict(output.metrics)
        if self.validation is not None:
            # Decoded once, on rank 0 (the others wait); every rank receives the same scores, so
            # keeping the best and stopping early are decided the same everywhere.
            scores = None
            if self.args.process_index == 0:
                scores = self.validation(self.accelerator.unwrap_model(self.model))
            scores = ranks.share(scores)
            metrics.update({f"{metric_key_prefix}_{k}": v for k, v in scores.items()})
            self._keep_best(metrics[f"{metric_key_prefix}_f1"], metrics)
            if self.args.process_index == 0:
                for row in self.validation.last_predictions:  # readable without any tracker
                    self.run.append_val_prediction({"step": self.state.global_step, **row})
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _keep_best(self, f1: float, metrics: dict) -> None:
        state = self.state
        if state.best_metric is None or f1 > state.best_metric:
            state.best_metric = f1
            state.best_global_step = state.global_step
            self._save_best(metrics)
        elif self.patience is not None:
            evals_since_best = sum(1 for h in state.log_history
                                   if "eval_f1" in h and h["step"] > state.best_global_step) + 1
            if evals_since_best >= self.patience:
                self.control.should_training_stop = True
                self.stopped_early_at = state.global_step  # read by the run summary

    def _save_best(self, metrics: dict) -> None:
        # Every rank calls this (they share the scores): under ZeRO-3 / FSDP `save_model` gathers
        # the sharded weights collectively; rank 0 alone writes and swaps the folder.
        main = self.args.process_index == 0
        if main:
            shutil.rmtree(self.run.best_staging, ignore_errors=True)
        ranks.barrier()
        self.save_model(str(self.run.best_staging))
        if main:
            self.run.save_best({"step": self.state.global_step, **metrics})

    # A checkpoint is written into a staging folder and renamed into place, so `--resume` after
    # a kill never finds half a checkpoint.
    def _save_checkpoint(self, model, trial):
        # Every rank takes part (each writes its rng_state_N.pth; ZeRO / FSDP save shards);
        # rank 0 alone prepares the staging folder, moves it into place and rotates.
        main = self.args.process_index == 0
        self._staging = self.run.checkpoint_staging
        if main:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging.mkdir(parents=True)
        ranks.barrier()
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        ranks.barrier()
        if main:
            self.run.move_checkpoints_into_place()
            self.run.rotate_checkpoints(self.args.save_total_limit)

    def _get_output_dir(self, trial):
        staging = getattr(self, "_staging", None)
        return str(staging) if staging is not None else super()._get_output_dir(trial)
