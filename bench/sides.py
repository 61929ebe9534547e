"""One side of the benchmark in its own process: `python -m bench.sides ROLE SPEC.json OUT.json`.

Roles: `train-baseline`, `train-nerft`, `infer-baseline`, `infer-nerft`,
`infer-nerft-unconstrained` (nerft's decoder with constrained decoding off). Each process loads what
it needs, so its peak memory and its timings are its own. SPEC.json is written by `bench.run`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from bench import baseline
from bench.instrument import RssSampler, StepLog, instrumented
from nerft.data.example import Example, read_examples
from nerft.eval.metrics import score_corpus
from nerft.prompt import Task, parse_answer

EVAL_BATCH = 16  # nerft's default eval.batch_size, used for every generate_answers call here


def score(examples: list[Example], answers: list[str], labels: tuple[str, ...]) -> dict:
    """Strict micro F1 and parse rate with the project's parser, the same for both sides."""
    parsed = [parse_answer(a, ex.text, labels) for a, ex in zip(answers, examples)]
    micro = score_corpus([ex.entities for ex in examples], [p.spans for p in parsed], "strict").micro
    return {"f1": micro.f1, "precision": micro.precision, "recall": micro.recall,
            "parse_rate": sum(p.well_formed for p in parsed) / max(len(parsed), 1)}


def nerft_validation(model, tokenizer, task: Task, examples: list[Example]) -> dict:
    """F1 with nerft's own validation decoder (what `train` runs at each evaluation)."""
    from nerft.infer.generate import generate_answers

    start = time.perf_counter()
    answers = generate_answers(model, tokenizer, task, [ex.text for ex in examples],
                               batch_size=EVAL_BATCH)
    return {**score(examples, answers, task.labels), "eval_seconds": time.perf_counter() - start}


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
    log = StepLog(16, spec["count_flops"], rss=rss)
    args = baseline.training_arguments(Path(spec["work"]) / "baseline-run", spec["samples"] // 16,
                                       seed=spec["seed"])
    trainer = baseline.build_trainer(model, tokenizer, dataset, args, instrumented(Trainer, log))
    order: list[str] = []
    collate = trainer.data_collator

    def recording_collator(features):
        order.extend(ids_by_tokens[tuple(f["input_ids"])] for f in features)
        return collate(features)

    trainer.data_collator = recording_collator
    trainer.train()
    with rss.phase("eval"):
        quality = nerft_validation(model, tokenizer, task, _load(spec, "val.jsonl"))
    return {"tokenise_seconds": tokenise_s, "tokenise_rows": len(tok_rows),
            "truncated_rows": truncated, **log.summary(), "order": order,
            "f1_at_samples": {"samples": log.summary()["samples"], **quality}}


def train_nerft(spec: dict, rss: RssSampler) -> dict:
    from rich.console import Console
    from transformers import AutoTokenizer

    import nerft.train.workflow as workflow
    from nerft.config import Config
    from nerft.train.encode import encode_examples

    task = Task(tuple(spec["labels"]))
    tok_rows = _load(spec, "tokenise.jsonl")
    with rss.phase("tokenise"):
        tokenizer = AutoTokenizer.from_pretrained(spec["model_folder"])
        start = time.perf_counter()
        _, report = encode_examples(tokenizer, task, tok_rows, 384)
        tokenise_s = time.perf_counter() - start

    steps_at_samples = spec["samples"] // 16
    budget = spec.get("wall_budget_s")
    max_steps = spec["nerft_max_steps"] if budget else steps_at_samples
    log = StepLog(16, spec["count_flops"], wall_budget_s=budget, rss=rss,
                  eval_at_steps={0, steps_at_samples})
    order: list[str] = []

    class RecordingCollator(workflow.PackedCollator):
        def __call__(self, batch):
            if log.phase == "train":  # training batches only, not the eval loss
                order.extend(e.id for e in batch)
            return super().__call__(batch)

    workflow.NerTrainer = instrumented(workflow.NerTrainer, log)
    workflow.PackedCollator = RecordingCollator
    work = Path(spec["work"])
    config = Config.model_validate({
        "data": {"dir": str(work / "data"), "max_length": 384},
        "model": {"source": spec["model_source"], "dtype": "auto"},
        "method": {"kind": "lora", "lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.1},
        "training": {"output_dir": str(work / "nerft-run"), "max_steps": max_steps,
                     "batch_size": 16, "grad_accum": 1, "lr": 1e-4, "scheduler": "constant",
                     "warmup_ratio": 0.0, "gradient_checkpointing": False,
                     "packing": "shared_prefix", "seed": spec["seed"], "save_steps": 10**6},
        "eval": {"eval_steps": max(steps_at_samples, 1), "val_size": 10**6,
                 "batch_size": EVAL_BATCH, "early_stopping_patience": None, "log_predictions": 0},
        "tracking": {"swanlab": "off"},
    })
    summary = workflow.train(config, console=Console(stderr=True))
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
            "adapter": str(summary.run_dir / "final")}


def infer(spec: dict, rss: RssSampler, decoder: str) -> dict:
    from peft import PeftModel

    from nerft.infer.generate import AnswerGenerator, DecodeOptions

    task = Task(tuple(spec["labels"]))
    examples = _load(spec, "test.jsonl")
    with rss.phase("load"):
        model, tokenizer = baseline.load_model(Path(spec["model_folder"]))
        model = PeftModel.from_pretrained(model, spec["adapter"])
        if decoder != "baseline":
            model = model.merge_and_unload()  # what `nerft predict` / `nerft eval` load
        model.eval()
    texts = [ex.text for ex in examples]
    stats = None
    with rss.phase("infer"):
        if decoder == "baseline":
            answers, generated, seconds = baseline.predict_all(
                model, tokenizer, texts, spec.get("max_new_tokens", baseline.MAX_NEW_TOKENS))
        else:
            start = time.perf_counter()
            decoded = AnswerGenerator(model, tokenizer, task).decode(
                texts, DecodeOptions(batch_size=EVAL_BATCH, constrained=decoder == "nerft"))
            answers, stats = decoded.answers, decoded.stats
            seconds, generated = time.perf_counter() - start, None
    answer_tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    return {"sentences": len(texts), "seconds": seconds, "sentences_per_s": len(texts) / seconds,
            "answer_tokens": answer_tokens, "answer_tokens_per_s": answer_tokens / seconds,
            "generated_tokens": generated, "decoder_steps": stats,
            **score(examples, answers, task.labels),
            "answers": answers[:5]}


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
    elif role in ("infer-baseline", "infer-nerft", "infer-nerft-unconstrained"):
        result = infer(spec, rss, role.removeprefix("infer-"))
    else:
        raise SystemExit(f"unknown role {role!r}")
    result["process_seconds"] = time.perf_counter() - start
    result["memory"] = rss.close()
    Path(out_path).write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
