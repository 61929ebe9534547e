"""`nerft train`: one recipe from a config to a run directory with the best adapter."""

from __future__ import annotations

import random
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from nerft.config import Config, is_tagger
from nerft.data.example import Example
from nerft.data.prepared import PreparedData
from nerft.task.prompt import Task
from nerft.train import continual
from nerft.train.callbacks import MetricsFile, RichProgress, SwanLabTracker
from nerft.train.collate import PackedCollator, answer_only_loss
from nerft.train.encode import encode_examples
from nerft.train.method import apply_method, per_example_attention, training_attention
from nerft.train.tagger import NOT_USED, encode_tagged, tagging_loss
from nerft.task.bio import tag_names
from nerft.runs.run_dir import RunDir, RunDirError, init_run_dir
from nerft.train import ranks
from nerft.train.resume import AlreadyFinished, RunStateError, check_resume_config, resume_checkpoint
from nerft.train.sampling import cap_empty_share
from nerft.train.schedule import Schedule, plan_schedule
from nerft.train.trainer import NerTrainer, Validation
from nerft.errors import NerftError


class TrainError(NerftError):
    """A problem the user can fix (existing run dir, empty data): one line, exit code 2."""


@dataclass
class RunSummary:
    run_dir: Path
    steps: int
    best_step: int | None
    best_f1: float | None
    initial_f1: float | None
    stopped_early: bool
    # Validation F1 and gold count per label at the best step: {label: {"f1", "support"}}.
    best_per_label: dict[str, dict[str, float]] = field(default_factory=dict)
    new_labels: tuple[str, ...] = ()  # init_from: labels the parent run never saw
    continued: bool = False  # init_from: step 0 is the parent's model, not the untrained one

    @property
    def best_weights(self) -> Path:
        """The folder with the best validation F1 (what predict, serve and export load)."""
        return RunDir(self.run_dir).best

    def to_dict(self) -> dict:
        return {**self.__dict__, "run_dir": str(self.run_dir)}


def per_label_scores(scores: dict) -> dict[str, dict[str, float]]:
    """{label: {"f1", "support"}} from best/'s scores (eval_f1/LABEL, eval_support/LABEL)."""
    out: dict[str, dict[str, float]] = {}
    for key, value in scores.items():
        for kind in ("f1", "support"):
            prefix = f"eval_{kind}/"
            if key.startswith(prefix):
                out.setdefault(key[len(prefix):], {})[kind] = value
    return out


def task_labels(data_dir: Path, examples: list[Example]) -> tuple[str, ...]:
    """The label set, in the order `nerft data prepare` recorded (falls back to the data)."""
    return PreparedData(data_dir).labels or tuple(sorted({s.label for ex in examples for s in ex.entities}))


def validation_subset(examples: list[Example], size: int, seed: int) -> list[Example]:
    """A fixed, seeded subset so every evaluation scores the same sentences."""
    if len(examples) <= size:
        return list(examples)
    picked = sorted(random.Random(seed).sample(range(len(examples)), size))
    return [examples[i] for i in picked]


def train(config: Config, *, resume: bool = False, overwrite: bool = False,
          console: Console | None = None) -> RunSummary:
    """Train as `config` says into training.output_dir; see `nerft.train.resume` for what
    `resume` and `overwrite` do with a run directory that already holds something."""
    console = console or Console(stderr=True)
    run = RunDir(Path(config.training.output_dir))
    ranks.start()
    if ranks.world_size() > 1 and config.training.packing == "prefix_kv":
        # two forward passes per step (the prefix, then the examples) through one DDP wrapper
        # is not something we have verified; refuse rather than risk a wrong gradient
        raise TrainError("training.packing prefix_kv runs in one process only; with "
                         f"{ranks.world_size()} processes set training.packing=shared_prefix")
    if ranks.world_size() == 1:
        with run.writing():
            last, changes = _starting_point(run, config, resume=resume, overwrite=overwrite,
                                            console=console)
            return _train(config, run, last, changes, console)
    # Several processes: rank 0 alone takes the lock and reads or clears the run directory; the
    # others receive its decision (or its error, so that every rank stops with the same message).
    with ExitStack() as stack:
        decision = None
        if ranks.is_main():
            try:
                stack.enter_context(run.writing())
                decision = _starting_point(run, config, resume=resume, overwrite=overwrite,
                                           console=console)
            except (TrainError, AlreadyFinished, RunStateError, RunDirError) as e:
                decision = e
        decision = ranks.share(decision)
        if isinstance(decision, Exception):
            raise decision
        last, changes = decision
        return _train(config, run, last, changes, console)


def _starting_point(run: RunDir, config: Config, *, resume: bool, overwrite: bool,
                    console: Console) -> tuple[Path | None, list[str]]:
    """The checkpoint to continue from (None: step 0), and the settings a resume changed."""
    def warn(message: str) -> None:
        console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)

    def say(message: str) -> None:
        console.print(message, highlight=False, soft_wrap=True)

    if overwrite:
        run.clear()
        return None, []
    if not resume:
        if run.outputs():
            raise TrainError(f"{run.path} already holds a run; pass --resume to continue it, "
                             "--overwrite to start it afresh, or choose another training.output_dir")
        return None, []
    if not run.outputs():
        raise TrainError(f"{run.path}: no run to resume; start without --resume")
    if run.finished():
        raise AlreadyFinished(f"{run.path} has already finished ({run.summary.name}); nothing to "
                              "resume. --overwrite trains it again from step 0")
    changes = check_resume_config(run, config) if RunDir.is_run(run.path) else []
    return resume_checkpoint(run, warn, say), changes


@dataclass
class TrainingRows:
    train: list[Example]
    val: list[Example]
    val_from: Path | None  # the parent's val.jsonl when this data has no validation rows
    sampled: object  # what data.max_empty_share kept (`cap_empty_share`)


def _train(config: Config, run: RunDir, last: Path | None, resume_changes: list[str],
           console: Console) -> RunSummary:
    """The recipe, one named step per line; `last` is the checkpoint to resume from.
    training.num_threads holds for this run only: a caller that trains in its own process (a
    notebook, the benches, the tests) gets its thread count back afterwards."""
    threads = torch.get_num_threads()
    try:
        return _train_steps(config, run, last, resume_changes, console)
    finally:
        torch.set_num_threads(threads)


def _train_steps(config: Config, run: RunDir, last: Path | None, resume_changes: list[str],
                 console: Console) -> RunSummary:
    resume = last is not None
    _setup_process(config)
    rows = _setup_data(config, console)
    task, lineage = _setup_task(config, rows, console)
    main = ranks.is_main()
    if not main:
        console = Console(stderr=True, quiet=True)  # one process speaks
    # The model first: a mistyped source must not leave a run directory behind.
    model, tokenizer = _load_model(config, lineage, task)
    if main:
        init_run_dir(config, run.path, resume=resume, labels=list(task.labels),
                     resume_changes=resume_changes, lineage=lineage.info if lineage else None,
                     training_rows=rows.sampled.to_dict(), guidelines=task.record().get("guidelines"))
    model = _setup_method(config, model, lineage, console)
    train_enc, val_subset, val_enc = _encode(config, tokenizer, task, rows, console)
    schedule = plan_schedule(config, len(train_enc), resume, console)
    trainer = _setup_trainer(config, run, model, tokenizer, task, (train_enc, val_subset, val_enc),
                             schedule, lineage, resume, console)
    if resume:
        _rewind_records(run, last, console)
    trainer.train(resume_from_checkpoint=last)
    return _finish(trainer, run, lineage)


def _setup_process(config: Config) -> None:
    from transformers import set_seed

    if config.training.num_threads:
        torch.set_num_threads(config.training.num_threads)
    set_seed(config.training.seed)


def _setup_data(config: Config, console: Console) -> TrainingRows:
    """The training rows (data.train_limit, then data.max_empty_share) and validation rows (a
    child run without its own takes its parent's)."""
    data = PreparedData(config.data.dir)
    train_rows = list(data.rows("train"))[:config.data.train_limit]
    train_rows, sampled = cap_empty_share(train_rows, config.data.max_empty_share, config.training.seed)
    if sampled.empty_kept < sampled.empty_before:
        console.print(sampled.describe(), highlight=False)
    val_rows, val_path = list(data.rows("val")), None
    if not val_rows and config.init_from is not None:
        val_rows, val_path = continual.parent_validation_rows(config)
        console.print(f"{data.split('val')} has no rows: validating on the parent's "
                      f"{len(val_rows):,} ({val_path})", highlight=False, soft_wrap=True)
    if not train_rows and sampled.empty_before:
        raise TrainError(f"{data.split('train')}: no training row has an entity, and "
                         f"data.max_empty_share={config.data.max_empty_share} keeps entity-free "
                         "rows only beside rows with one; annotate entities or set data.max_empty_share=null")
    if not train_rows or not val_rows:
        raise TrainError(f"{data.split('train')} and {data.split('val')} must both have rows "
                         "(with init_from, an empty validation split means the parent's validation rows)")
    return TrainingRows(train_rows, val_rows, val_path, sampled)


def _setup_task(config: Config, rows: TrainingRows,
                console: Console) -> tuple[Task, continual.Lineage | None]:
    """The label set and answer format; with init_from, the parent's labels first and its
    replayed rows added to `rows.train`."""
    labels = task_labels(config.data.dir, rows.train)
    lineage = continual.start(config, rows.train, labels, console)  # None without init_from
    if lineage is not None:
        rows.train, labels = rows.train + lineage.replay, lineage.labels
        if rows.val_from is not None:
            lineage.info["validation_rows_from"] = str(rows.val_from.resolve())
    # data.guidelines: a guideline file naming a label the data lacks fails here, by name.
    guidelines = PreparedData(config.data.dir).task_guidelines(config.data.guidelines, labels)
    try:
        return Task(labels, config.data.answer_format, guidelines), lineage
    except ValueError as e:
        raise TrainError(f"{config.data.dir}: {e}") from e


def _load_model(config: Config, lineage: continual.Lineage | None, task: Task):
    from nerft.models.base import load_model_and_tokenizer

    return load_model_and_tokenizer(
        lineage.source if lineage else config.model.source, dtype=config.model.dtype,
        trust_remote_code=config.model.trust_remote_code,
        tokenizer_folder=lineage.tokenizer_folder if lineage else None,
        tags=tag_names(task.labels) if is_tagger(config.method.head) else None,
        bidirectional=config.method.head == "tagger-bidirectional")


def _setup_method(config: Config, model, lineage: continual.Lineage | None, console: Console):
    """The model made trainable as method.kind says (or from the parent's weights)."""
    model.set_attn_implementation(training_attention(config))
    model.config.use_cache = False  # training never reuses a cache; generation passes its own
    model, report = (continual.continue_model(lineage, model, config) if lineage
                     else apply_method(model, config.method))
    console.print(f"{config.method.kind}: {report}", highlight=False)
    return model


def _encode(config: Config, tokenizer, task: Task, rows: TrainingRows, console: Console):
    """(encoded training rows, the fixed validation subset, that subset encoded)."""
    val_subset = validation_subset(rows.val, config.eval.val_size, config.training.seed)
    if is_tagger(config.method.head):
        console.print(NOT_USED, highlight=False, soft_wrap=True)
        train_enc, train_report, tags = encode_tagged(tokenizer, task.labels, rows.train,
                                                      config.data.max_length)
        val_enc, _, _ = encode_tagged(tokenizer, task.labels, val_subset, config.data.max_length)
        console.print(tags.line(), highlight=False, soft_wrap=True)
    else:
        train_enc, train_report = encode_examples(tokenizer, task, rows.train, config.data.max_length)
        val_enc, _ = encode_examples(tokenizer, task, val_subset, config.data.max_length)
    if not train_enc and train_report.too_long:  # e.g. label guidelines lengthened the instruction
        instruction = len(tokenizer(task.system_prompt)["input_ids"])
        raise TrainError(f"every training row is longer than data.max_length={config.data.max_length} "
                         f"tokens (the instruction alone is {instruction}); raise data.max_length")
    console.print(f"encoded {train_report.kept:,} training rows "
                  f"({len(train_report.too_long):,} longer than {config.data.max_length} tokens dropped)",
                  highlight=False)
    return train_enc, val_subset, val_enc


def _setup_trainer(config: Config, run: RunDir, model, tokenizer, task: Task, encoded,
                   schedule: Schedule, lineage, resume: bool, console: Console) -> NerTrainer:
    """The Trainer with our collator, validation and callbacks (its own printers removed)."""
    train_enc, val_subset, val_enc = encoded
    # A child run (init_from) always scores its starting point, the parent: when training on the
    # new rows only hurts the parent's job, best/ then keeps the parent's weights.
    score_start = (config.eval.at_start or lineage is not None) and not resume
    if lineage is not None and not config.eval.at_start and not resume:
        console.print("init_from: the parent's model is scored at step 0 (eval.at_start), so "
                      "best/ keeps it if training does not beat it", highlight=False)
    dtype = next(model.parameters()).dtype
    args = _training_args(config, run, schedule, score_start, dtype)
    mask_dtype = dtype if dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32
    tagger = is_tagger(config.method.head)
    collator = PackedCollator("none" if tagger else config.training.packing,
                              pad_id=tokenizer.pad_token_id or 0, mask_dtype=mask_dtype,
                              segments=per_example_attention(config))
    validation = Validation(task, tokenizer, val_subset, batch_size=config.eval.batch_size,
                            log_predictions=config.eval.log_predictions,
                            constrained=config.eval.constrained)
    try:
        trainer = NerTrainer(
            model=model, args=args, train_dataset=train_enc, eval_dataset=val_enc,
            data_collator=collator, callbacks=_callbacks(config, run, schedule, validation, console),
            validation=validation, run_dir=run.path,
            early_stopping_patience=config.eval.early_stopping_patience,
            loss=tagging_loss if tagger else answer_only_loss)
    except ValueError as e:
        raise TrainError(str(e)) from e
    # The Trainer's own progress printer duplicates ours.
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def _training_args(config: Config, run: RunDir, schedule: Schedule, score_start: bool, dtype):
    from transformers import TrainingArguments

    t = config.training
    on_cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(run.path),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=config.eval.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=schedule.lr, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.epochs, max_steps=t.max_steps,
        lr_scheduler_type=t.scheduler, warmup_steps=round(t.warmup_ratio * schedule.total_steps),
        logging_steps=t.logging_steps,
        eval_strategy="steps", eval_steps=config.eval.eval_steps, eval_on_start=score_start,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=t.save_total_limit,
        seed=t.seed, data_seed=t.seed,
        gradient_checkpointing=t.gradient_checkpointing,
        bf16=on_cuda and dtype == torch.bfloat16, fp16=on_cuda and dtype == torch.float16,
        use_cpu=not on_cuda,
        train_sampling_strategy="group_by_length" if t.packing == "none" else "random",
        remove_unused_columns=False, label_names=["labels"], prediction_loss_only=True,
        report_to=[], disable_tqdm=True, dataloader_num_workers=0,
        ddp_backend="gloo" if ranks.world_size() > 1 and not on_cuda else None,
    )


def _callbacks(config: Config, run: RunDir, schedule: Schedule, validation: Validation,
               console: Console) -> list:
    """metrics.jsonl, the progress line and the trackers asked for; rank 0 alone records."""
    if not ranks.is_main():
        return []
    callbacks = [MetricsFile(run, schedule.samples_per_step),
                 RichProgress(schedule.samples_per_step, console)]
    if config.tracking.swanlab != "off":
        callbacks.append(SwanLabTracker(
            config.tracking.swanlab, config.tracking.project,
            config.tracking.experiment or run.path.name, config.model_dump(mode="json"),
            run.swanlog, validation))
    if config.tracking.tensorboard:
        from transformers.integrations import TensorBoardCallback
        from transformers.integrations.integration_utils import is_tensorboard_available

        if not is_tensorboard_available():
            raise TrainError("tracking.tensorboard needs the tensorboard package: "
                             "`pip install tensorboard`")
        from torch.utils.tensorboard import SummaryWriter

        # Our own writer: the callback would otherwise read its folder from an environment
        # variable, a process-wide setting.
        callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run.tensorboard))))
    return callbacks


def _rewind_records(run: RunDir, last: Path, console: Console) -> None:
    """Drop what the interrupted run logged after the checkpoint it resumes from."""
    if ranks.is_main():
        run.trim_metrics(RunDir.checkpoint_step(last))
    console.print(f"resuming from {last}", highlight=False, soft_wrap=True)


def _finish(trainer: NerTrainer, run: RunDir, lineage) -> RunSummary:
    """final/ and summary.json (written last: the run has finished)."""
    main = ranks.is_main()
    state = trainer.state
    evals = [h for h in state.log_history if "eval_f1" in h]
    summary = RunSummary(
        run_dir=run.path, steps=state.global_step, best_step=state.best_global_step,
        best_f1=state.best_metric, initial_f1=evals[0]["eval_f1"] if evals and evals[0]["step"] == 0 else None,
        stopped_early=trainer.stopped_early_at is not None,
        new_labels=lineage.new_labels if lineage else (), continued=lineage is not None)
    if main:
        shutil.rmtree(run.final_staging, ignore_errors=True)
    ranks.barrier()
    trainer.save_model(str(run.final_staging))  # every rank: ZeRO-3 / FSDP gather the weights; rank 0 writes
    if main:
        run.save_final()
        summary.best_per_label = per_label_scores(run.best_scores())
        run.write_summary(summary.to_dict())
    ranks.barrier()  # no rank returns before the run directory is complete
    return summary
