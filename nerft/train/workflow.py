"""`nerft train`: one recipe from a config to a run directory with the best adapter."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from nerft.config import Config
from nerft.data.example import Example, read_examples
from nerft.prompt import Task
from nerft.train.callbacks import MetricsFile, RichProgress, SwanLabTracker
from nerft.train.collate import PackedCollator
from nerft.train.encode import encode_examples
from nerft.train.method import apply_method
from nerft.train.run_dir import init_run_dir, trim_metrics, write_json_atomic
from nerft.train.trainer import NerTrainer, Validation


class TrainError(Exception):
    """A problem the user can fix (existing run dir, empty data): one line, exit code 2."""


@dataclass
class RunSummary:
    run_dir: Path
    steps: int
    best_step: int | None
    best_f1: float | None
    initial_f1: float | None
    stopped_early: bool

    def to_dict(self) -> dict:
        return {**self.__dict__, "run_dir": str(self.run_dir)}


def task_labels(data_dir: Path, examples: list[Example]) -> tuple[str, ...]:
    """The label set, in the order `nerft data prepare` recorded (falls back to the data)."""
    stats = data_dir / "stats.json"
    if stats.is_file():
        labels = json.loads(stats.read_text(encoding="utf-8")).get("labels")
        if labels:
            return tuple(labels)
    return tuple(sorted({s.label for ex in examples for s in ex.entities}))


def validation_subset(examples: list[Example], size: int, seed: int) -> list[Example]:
    """A fixed, seeded subset so every evaluation scores the same sentences."""
    if len(examples) <= size:
        return list(examples)
    picked = sorted(random.Random(seed).sample(range(len(examples)), size))
    return [examples[i] for i in picked]


def train(config: Config, *, resume: bool = False, console: Console | None = None) -> RunSummary:
    from transformers import TrainingArguments, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from nerft.model import load_model_and_tokenizer

    console = console or Console(stderr=True)
    t, run_dir = config.training, Path(config.training.output_dir)
    last = get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None
    if resume and last is None:
        raise TrainError(f"{run_dir}: no checkpoint to resume from; start without --resume")
    if not resume and run_dir.is_dir() and (last is not None or (run_dir / "metrics.jsonl").exists()):
        raise TrainError(f"{run_dir} already holds a run; pass --resume to continue it or choose "
                         "another training.output_dir")
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    set_seed(t.seed)

    train_rows = list(read_examples(config.data.dir / "train.jsonl"))[:config.data.train_limit]
    val_rows = list(read_examples(config.data.dir / "val.jsonl"))
    if not train_rows or not val_rows:
        raise TrainError(f"{config.data.dir}: train.jsonl and val.jsonl must both have rows")
    task = Task(task_labels(config.data.dir, train_rows))
    init_run_dir(config, run_dir, resume=resume, labels=list(task.labels))

    model, tokenizer = load_model_and_tokenizer(
        config.model.source, dtype=config.model.dtype, trust_remote_code=config.model.trust_remote_code)
    model.set_attn_implementation(config.model.attn_implementation)
    model.config.use_cache = False  # training never reuses a cache; generation passes its own
    model, report = apply_method(model, config.method)
    console.print(f"{config.method.kind}: {report}", highlight=False)

    train_enc, train_report = encode_examples(tokenizer, task, train_rows, config.data.max_length)
    val_subset = validation_subset(val_rows, config.eval.val_size, t.seed)
    val_enc, _ = encode_examples(tokenizer, task, val_subset, config.data.max_length)
    console.print(f"encoded {train_report.kept:,} training rows "
                  f"({len(train_report.too_long):,} longer than {config.data.max_length} tokens dropped)",
                  highlight=False)

    on_cuda = torch.cuda.is_available()
    dtype = next(model.parameters()).dtype
    samples_per_step = t.batch_size * t.grad_accum
    steps_per_epoch = math.ceil(len(train_enc) / samples_per_step)
    total_steps = t.max_steps if t.max_steps > 0 else math.ceil(steps_per_epoch * t.epochs)
    args = TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=config.eval.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.epochs, max_steps=t.max_steps,
        lr_scheduler_type=t.scheduler, warmup_steps=round(t.warmup_ratio * total_steps),
        logging_steps=t.logging_steps,
        eval_strategy="steps", eval_steps=config.eval.eval_steps, eval_on_start=config.eval.at_start and not resume,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=t.save_total_limit,
        seed=t.seed, data_seed=t.seed,
        gradient_checkpointing=t.gradient_checkpointing,
        bf16=on_cuda and dtype == torch.bfloat16, fp16=on_cuda and dtype == torch.float16,
        use_cpu=not on_cuda,
        train_sampling_strategy="group_by_length" if t.packing == "none" else "random",
        remove_unused_columns=False, label_names=["labels"], prediction_loss_only=True,
        report_to=[], disable_tqdm=True, dataloader_num_workers=0,
    )
    mask_dtype = dtype if dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32
    collator = PackedCollator(t.packing, pad_id=tokenizer.pad_token_id or 0, mask_dtype=mask_dtype)
    validation = Validation(task, tokenizer, val_subset, batch_size=config.eval.batch_size,
                            log_predictions=config.eval.log_predictions,
                            constrained=config.eval.constrained)
    callbacks = [MetricsFile(run_dir / "metrics.jsonl", samples_per_step), RichProgress(samples_per_step, console)]
    if config.tracking.swanlab != "off":
        callbacks.append(SwanLabTracker(
            config.tracking.swanlab, config.tracking.project,
            config.tracking.experiment or run_dir.name, config.model_dump(mode="json"),
            run_dir / "swanlog", validation))
    if config.tracking.tensorboard:
        from transformers.integrations import TensorBoardCallback
        from transformers.integrations.integration_utils import is_tensorboard_available

        if not is_tensorboard_available():
            raise TrainError("tracking.tensorboard needs the tensorboard package: "
                             "`pip install tensorboard`")
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")  # read by the callback
        callbacks.append(TensorBoardCallback())

    trainer = NerTrainer(
        model=model, args=args, train_dataset=train_enc, eval_dataset=val_enc,
        data_collator=collator, callbacks=callbacks, validation=validation, run_dir=run_dir,
        early_stopping_patience=config.eval.early_stopping_patience)
    # The Trainer's own progress printer duplicates ours.
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if resume:
        trim_metrics(run_dir / "metrics.jsonl", int(Path(last).name.split("-")[-1]))
        console.print(f"resuming from {last}", highlight=False)
    trainer.train(resume_from_checkpoint=last if resume else None)

    final = run_dir / "final"
    shutil.rmtree(final, ignore_errors=True)
    trainer.model.save_pretrained(final)
    state = trainer.state
    evals = [h for h in state.log_history if "eval_f1" in h]
    summary = RunSummary(
        run_dir=run_dir, steps=state.global_step, best_step=state.best_global_step,
        best_f1=state.best_metric, initial_f1=evals[0]["eval_f1"] if evals and evals[0]["step"] == 0 else None,
        stopped_early=getattr(state, "stopped_early_at", None) is not None)
    write_json_atomic(run_dir / "summary.json", summary.to_dict())
    return summary
