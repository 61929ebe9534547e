"""One side of the benchmark in its own process: `python -m bench.sides ROLE SPEC.json OUT.json`.

Roles: `train-baseline`, `train-nerft`; inference as a user of each gets it (`infer-baseline`:
the worked example's own adapter, unmerged, 512 tokens, its own stop rule and parser;
`infer-nerft`: nerft's adapter merged, constrained decoding) and at equal work (`infer-equal-hf`,
`infer-equal-nerft`: nerft's adapter merged, nerft's prompts, the same per-sentence budget and
stop tokens, one sentence at a time with `model.generate` vs nerft's batched decoder with
constrained decoding off). Each process loads what it needs, so its peak memory and its timings
are its own. SPEC.json is written by `bench.run`.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import torch

from bench import baseline
from bench.instrument import RssSampler, StepLog, instrumented
from nerft.data.example import Example, read_examples
from nerft.eval.metrics import score_corpus
from nerft.task.prompt import Task, parse_answer

EVAL_BATCH = 16  # nerft's default eval.batch_size, used for every generate_answers call here


def read_answer(answer: str, text: str, labels: tuple[str, ...], answer_format: str = "json"):
    """The reader used for every answer here, whatever its format: objects written back to back
    (the worked example's format) are split where one closes and the next opens, then read by
    nerft's parser. nerft's one-object-per-line answers pass through unchanged, and so do
    compact answers (a lever that trains nerft's compact format)."""
    if answer_format == "json":
        answer = re.sub(r"\}\s*\{", "}\n{", answer)
    return parse_answer(answer, text, labels, answer_format)


def score(examples: list[Example], answers: list[str], labels: tuple[str, ...],
          answer_format: str = "json") -> dict:
    """Strict micro F1 and parse rate (`read_answer`), the same for both sides."""
    parsed = [read_answer(a, ex.text, labels, answer_format) for a, ex in zip(answers, examples)]
    micro = score_corpus([ex.entities for ex in examples], [p.spans for p in parsed], "strict").micro
    return {"f1": micro.f1, "precision": micro.precision, "recall": micro.recall,
            "parse_rate": sum(p.well_formed for p in parsed) / max(len(parsed), 1)}


@torch.no_grad()
def generate_one_by_one(model, tokenizer, prompts: list[list[int]], budgets: list[int],
                        stop_ids: list[int]) -> tuple[list[str], int]:
    """Greedy `model.generate`, one prompt at a time, each with its own token budget and the
    given stop tokens; returns the answers (special tokens skipped) and the answer tokens
    generated (a final stop token not counted, as nerft's decoder counts them)."""
    was_training = model.training
    model.eval()
    answers, generated = [], 0
    try:
        for ids, budget in zip(prompts, budgets):
            x = torch.tensor([ids], device=model.device)
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                 max_new_tokens=budget, eos_token_id=stop_ids, use_cache=True,
                                 pad_token_id=tokenizer.pad_token_id)
            new = out[0, x.shape[1]:]
            generated += int(new.numel()) - int(new.numel() > 0 and int(new[-1]) in stop_ids)
            answers.append(tokenizer.decode(new, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return answers, generated


def budget_of(spec: dict):
    """nerft's per-sentence answer budget, capped at spec["budget_cap"] where set (--quick: a
    random model never stops, so every answer would run to its full budget)."""
    from nerft.infer.stopping import answer_token_budget

    cap = spec.get("budget_cap")
    return lambda text: answer_token_budget(text) if cap is None else min(cap, answer_token_budget(text))


def common_reader(spec: dict, model, tokenizer, prompts: list[list[int]], examples: list[Example],
                  task: Task) -> dict:
    """F1 with the reader both sides share: each side's own prompt, no constraint, greedy
    `model.generate`, nerft's per-sentence budget and stop tokens, `read_answer`."""
    from nerft.task.chat import stop_token_ids

    start = time.perf_counter()
    answers, generated = generate_one_by_one(
        model, tokenizer, prompts, [budget_of(spec)(ex.text) for ex in examples],
        sorted(stop_token_ids(tokenizer, getattr(model, "generation_config", None))))
    return {**score(examples, answers, task.labels, task.answer_format), "generated_tokens": generated,
            "eval_seconds": time.perf_counter() - start}


def baseline_prompts(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer(baseline.prompt_text(tokenizer, t), add_special_tokens=False)["input_ids"]
            for t in texts]


def _load(spec: dict, name: str) -> list[Example]:
    return list(read_examples(Path(spec["work"]) / "data" / name))


def _raw(spec: dict, name: str) -> list[dict]:
    return baseline.read_raw_rows(Path(spec["work"]) / name)


def train_baseline(spec: dict, rss: RssSampler) -> dict:
    from transformers import Trainer, set_seed

    task = Task(tuple(spec["labels"]))
    with rss.phase("load"):
        model, tokenizer = baseline.load_model(Path(spec["model_folder"]))
    tok_rows = _raw(spec, "tokenise_raw.jsonl")
    with rss.phase("tokenise"):
        start = time.perf_counter()
        baseline.encode_dataset(tokenizer, tok_rows)
        tokenise_s = time.perf_counter() - start
    train_examples = _load(spec, "train.jsonl")
    dataset = baseline.encode_dataset(tokenizer, _raw(spec, "train_raw.jsonl"))
    ids_by_tokens = {tuple(row["input_ids"]): ex.id for row, ex in zip(dataset, train_examples)}
    truncated = sum(len(row["input_ids"]) >= baseline.MAX_LENGTH for row in dataset)

    set_seed(spec["seed"])
    model = baseline.add_lora(model)
    log = StepLog(16, spec["count_flops"], rss=rss, lora_seed=spec["seed"])
    args = baseline.training_arguments(Path(spec["work"]) / "baseline-run", spec["samples"] // 16,
                                       seed=spec["seed"])
    trainer = baseline.build_trainer(model, tokenizer, dataset, args, instrumented(Trainer, log))
    order: list[str] = []
    collate = trainer.data_collator

    def recording_collator(features):
        order.extend(ids_by_tokens[tuple(f["input_ids"])] for f in features)
        return collate(features)

    trainer.data_collator = recording_collator
    every = spec.get("eval_every_steps")
    snapshots = _LoraSnapshots(model, every, trainer.args.max_steps) if every else None
    if snapshots is not None:
        trainer.add_callback(snapshots.callback)
    trainer.train()
    # Training is over: decode with the KV cache, as the example's separate inference run does
    # (gradient checkpointing turns it off).
    model.gradient_checkpointing_disable()
    model.config.use_cache = True
    adapter = Path(spec["work"]) / "baseline-adapter"
    model.save_pretrained(adapter)
    trained = {"tokenise_seconds": tokenise_s, "tokenise_rows": len(tok_rows),
               "truncated_rows": truncated, **log.summary(), "order": order,
               "lora_init_checksum": log.lora_init_checksum,
               "lora_init_by_matrix": log.lora_init_by_matrix,
               "trainable_parameters": log.trainable_parameters, "adapter": str(adapter)}
    if not spec.get("baseline_f1", True):  # bench.levers: its speed only (decoding is slow)
        return {**trained, "f1_at_samples": None}
    val = _load(spec, "val.jsonl")

    reader_batch = spec.get("baseline_reader_batch", 1)
    texts = [ex.text for ex in val]

    def own_reader() -> dict:
        # the example's decoding (512 tokens, its stop rule) and format; several sentences per
        # generate call when --baseline-reader-batch asks (bench.run, bench.levers) (scoring is off the clock)
        start = time.perf_counter()
        answers, generated, _ = baseline.predict_all(model, tokenizer, texts, spec["max_new_tokens"],
                                                     batch_size=reader_batch)
        return {**score(val, answers, task.labels), "generated_tokens": generated,
                "eval_seconds": time.perf_counter() - start, "reader_batch": reader_batch,
                "answers": answers}

    checkpoints = []
    with rss.phase("eval"):
        if snapshots is not None:  # time to F1: the adapter as it was after every `every` steps
            for step, weights in snapshots.taken:
                snapshots.load(weights)
                checkpoints.append({"step": step, "samples": step * 16,
                                    "train_seconds": round(sum(log.step_seconds[:step]), 3),
                                    **own_reader()})
            own = checkpoints[-1]  # the last snapshot is the final adapter
        else:
            own = own_reader()
        if reader_batch > 1:  # the batched reader against the example's own, on the final adapter
            rows = spec.get("baseline_reader_check_rows", 16)
            alone, _, seconds = baseline.predict_all(model, tokenizer, texts[:rows], spec["max_new_tokens"])
            own["reader_check"] = {"rows": len(alone), "seconds": round(seconds, 1), "identical": sum(
                a == b for a, b in zip(alone, own["answers"]))}
        for entry in [own, *checkpoints]:
            entry.pop("answers", None)
        common = (common_reader(spec, model, tokenizer, baseline_prompts(tokenizer, [ex.text for ex in val]),
                                val, task) if spec.get("common_reader", True) else None)
    return {**trained, "evaluations": checkpoints,
            "f1_at_samples": {"samples": log.summary()["samples"], **own, "common_reader": common}}


class _LoraSnapshots:
    """A trainer callback that copies the trainable (LoRA) weights after every `every` optimizer
    steps and after the last, so they can be scored after training, outside the step clock
    (the baseline's decoding cannot run inside its Trainer). A copy of the adapter takes
    milliseconds against a step of a minute."""

    def __init__(self, model, every: int, max_steps: int):
        from transformers import TrainerCallback

        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.taken: list[tuple[int, dict]] = []
        outer = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step % every == 0 or state.global_step >= max_steps:
                    outer.taken.append((state.global_step, {n: p.detach().clone()
                                                            for n, p in outer.params.items()}))

        self.callback = Callback()

    def load(self, weights: dict) -> None:
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(weights[name])


def nerft_config(spec: dict, max_steps: int, steps_at_samples: int):
    """The bench's nerft settings, with a lever's overrides (bench.levers) applied."""
    from nerft.config import Config, apply_override

    work = Path(spec["work"])
    raw = {
        # Both sides train on the same rows in the same order: no entity-free row is sampled
        # away (data.max_empty_share would shrink the pool and so change the shuffle), and the
        # length limit drops no row the baseline keeps (it truncates at 384 tokens).
        # No label guidelines: the worked example's instruction has none, so both sides'
        # prompts hold the same words (presets would add ~124 tokens to nerft's).
        "data": {"dir": str(work / "data"), "max_length": 1024, "max_empty_share": None,
                 "guidelines": "off"},
        "model": {"source": spec["model_source"], "dtype": "auto"},
        "method": {"kind": "lora", "lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.1},
        "training": {"output_dir": str(work / spec.get("nerft_run_dir", "nerft-run")),
                     "max_steps": max_steps,
                     "batch_size": 16, "grad_accum": 1, "lr": 1e-4, "scheduler": "constant",
                     "warmup_ratio": 0.0, "gradient_checkpointing": False,
                     "packing": "shared_prefix", "seed": spec["seed"], "save_steps": 10**6},
        "eval": {"eval_steps": max(steps_at_samples, 1), "val_size": 10**6,
                 "batch_size": EVAL_BATCH, "early_stopping_patience": None, "log_predictions": 0,
                 "at_start": spec.get("eval_before_training", True)},
        "tracking": {"swanlab": "off"},
    }
    # bench.levers: one setting changed (e.g. method.lora_dropout=0), parsed as `nerft train`
    # parses its command-line overrides; everything else stays as above.
    for item in spec.get("nerft_overrides", ()):
        apply_override(raw, item)
    return Config.model_validate(raw)


def train_nerft(spec: dict, rss: RssSampler) -> dict:
    from rich.console import Console
    from transformers import AutoTokenizer

    import nerft.train.workflow as workflow
    from nerft.train.encode import encode_examples

    steps_at_samples = spec["samples"] // 16
    budget = spec.get("wall_budget_s")
    # time to F1 (bench.levers --every): evaluate every `every` steps, and past the first
    # `samples` go on (to cap_samples at most) until the target F1 is reached
    every = spec.get("eval_every_steps")
    cap_steps = max(spec.get("cap_samples") or spec["samples"], spec["samples"]) // 16
    max_steps = spec["nerft_max_steps"] if budget else cap_steps
    eval_steps = {0, steps_at_samples} | (set(range(every, cap_steps + 1, every)) if every else set())
    config = nerft_config(spec, max_steps, steps_at_samples)
    task = Task(tuple(spec["labels"]), config.data.answer_format)
    tok_rows = _load(spec, "tokenise.jsonl")
    with rss.phase("tokenise"):
        tokenizer = AutoTokenizer.from_pretrained(spec["model_folder"])
        start = time.perf_counter()
        _, report = encode_examples(tokenizer, task, tok_rows, 384)
        tokenise_s = time.perf_counter() - start

    val = _load(spec, "val.jsonl")
    from nerft.task.chat import encode_prompts

    val_prompts = encode_prompts(tokenizer, task, [ex.text for ex in val])
    with_common = spec.get("common_reader", True)
    log = StepLog(16, spec["count_flops"], wall_budget_s=budget, rss=rss,
                  eval_at_steps=eval_steps, min_steps=steps_at_samples,
                  lora_seed=spec["seed"], target_f1=spec.get("target_f1"),
                  on_eval=(lambda model: common_reader(spec, model, tokenizer, val_prompts, val,
                                                       task)) if with_common else None)
    order: list[str] = []

    class RecordingCollator(workflow.PackedCollator):
        def __call__(self, batch):
            if log.phase == "train":  # training batches only, not the eval loss
                order.extend(e.id for e in batch)
            return super().__call__(batch)

    workflow.NerTrainer = instrumented(workflow.NerTrainer, log)
    workflow.PackedCollator = RecordingCollator
    # the bench owns its work folder: a run left there by an earlier bench starts afresh
    summary = workflow.train(config, console=Console(stderr=True), overwrite=True)
    result = log.summary()
    by_step = {e["step"]: e for e in result["evaluations"]}
    at_samples = by_step.get(steps_at_samples, {})
    # Speeds over the first `samples` only, so both sides are timed on the same rows.
    first = log.step_seconds[:steps_at_samples]
    return {"tokenise_seconds": tokenise_s, "tokenise_rows": len(tok_rows),
            "dropped_too_long": len(report.too_long), **result, "order": order,
            "samples_per_s_at_samples": spec["samples"] / sum(first) if first else 0.0,
            "f1_before_training": by_step.get(0, {}).get("f1"),
            "f1_at_samples": {"samples": steps_at_samples * 16, **at_samples},
            "f1_at_wall_budget": result["evaluations"][-1] if budget else None,
            "lora_init_checksum": log.lora_init_checksum,
            "lora_init_by_matrix": log.lora_init_by_matrix,
            "trainable_parameters": log.trainable_parameters,
            "config": config.model_dump(mode="json"),
            "adapter": str(summary.run_dir / "final")}


def infer(spec: dict, rss: RssSampler, role: str) -> dict:
    from peft import PeftModel

    import nerft.infer.generate as generate
    from nerft.task.chat import encode_prompts, stop_token_ids
    from nerft.infer.generate import AnswerGenerator, DecodeOptions

    task = Task(tuple(spec["labels"]))
    examples = _load(spec, "test.jsonl")
    texts = [ex.text for ex in examples]
    user_baseline = role == "baseline"
    with rss.phase("load"):
        model, tokenizer = baseline.load_model(Path(spec["model_folder"]))
        adapter = spec["baseline_adapter"] if user_baseline else spec["adapter"]
        model = PeftModel.from_pretrained(model, adapter)
        if not user_baseline:
            model = model.merge_and_unload()  # what `nerft predict` / `nerft eval` load
        model.eval()
    stats, generated = None, None
    with rss.phase("infer"):
        start = time.perf_counter()
        if user_baseline:
            answers, generated, _ = baseline.predict_all(
                model, tokenizer, texts, spec.get("max_new_tokens", baseline.MAX_NEW_TOKENS))
        elif role == "equal-hf":
            answers, generated = generate_one_by_one(
                model, tokenizer, encode_prompts(tokenizer, task, texts),
                [budget_of(spec)(t) for t in texts],
                sorted(stop_token_ids(tokenizer, model.generation_config)))
        else:
            if role == "equal-nerft":  # the same (capped) budget as equal-hf
                generate.answer_token_budget = budget_of(spec)
            decoded = AnswerGenerator(model, tokenizer, task).decode(
                texts, DecodeOptions(batch_size=EVAL_BATCH, constrained=role == "nerft"))
            answers, stats = decoded.answers, decoded.stats
            generated = sum(len(ids) for ids in decoded.ids)
        seconds = time.perf_counter() - start
    answer_tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    return {"adapter": adapter, "merged": not user_baseline, "sentences": len(texts),
            "seconds": seconds, "sentences_per_s": len(texts) / seconds,
            "answer_tokens": answer_tokens, "answer_tokens_per_s": answer_tokens / seconds,
            "generated_tokens": generated,
            "generated_tokens_per_s": generated / seconds if generated is not None else None,
            "decoder_steps": stats, **score(examples, answers, task.labels, task.answer_format),
            "all_answers": answers}


def main(argv: list[str]) -> None:
    role, spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    rss = RssSampler()
    start = time.perf_counter()
    if role == "train-baseline":
        result = train_baseline(spec, rss)
    elif role == "train-nerft":
        result = train_nerft(spec, rss)
    elif role in ("infer-baseline", "infer-nerft", "infer-equal-hf", "infer-equal-nerft"):
        result = infer(spec, rss, role.removeprefix("infer-"))
    else:
        raise SystemExit(f"unknown role {role!r}")
    result["process_seconds"] = time.perf_counter() - start
    result["memory"] = rss.close()
    Path(out_path).write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
