"""Where one training step's time goes, per side (torch.profiler over forward + backward).

    python -m bench.profile_step --side nerft --model demo
    python -m bench.profile_step --side baseline --model demo

Builds one optimizer step's 16 training rows exactly as each side's training does (nerft:
`encode_examples` + `PackedCollator(--packing)` + `answer_only_loss` on the LoRA model
from `apply_method`; baseline: bench/baseline.py's encoding, collator, gradient checkpointing
and HF loss, one micro-batch of 4), times collate / forward / backward / optimizer, and prints
the operators that take the most time. `--compile` wraps the model in `torch.compile`
(inductor) first; its first step then includes the compilation, which is printed apart.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from bench import baseline
from bench.run import data_dir, model_folder


def _rows(n: int, skip: int = 0):
    from nerft.data.prepare import prepare

    data = data_dir() / "ccfbdci" / "ccfbdci.jsonl"
    prep = prepare([data])
    raw = {}
    for row in baseline.read_raw_rows(data):
        raw.setdefault(row["text"], row)
    rows = [ex for ex in prep.splits["train"] if len(ex.text) <= 200][skip:skip + n]
    return prep.labels, rows, [raw[ex.text] for ex in rows]


def nerft_step(source: str, n: int, lora_dropout: float, packing: str = "shared_prefix",
               top_k_layers: int | None = None, packed_attention: str = "grid"):
    from nerft.config import MethodConfig
    from nerft.models import packed_attention as per_example
    from nerft.models.base import load_model_and_tokenizer
    from nerft.task.prompt import Task
    from nerft.train.collate import PackedCollator, answer_only_loss
    from nerft.train.encode import encode_examples
    from nerft.train.method import apply_method

    labels, rows, _ = _rows(n)
    model, tokenizer = load_model_and_tokenizer(source)
    segments = packing == "shared_prefix" and packed_attention == "per_example"
    if segments:  # as training sets it (nerft.train.method.training_attention)
        per_example.register()
    model.set_attn_implementation(per_example.PER_EXAMPLE_SDPA if segments else "sdpa")
    model.config.use_cache = False
    model, _ = apply_method(model, MethodConfig(lora_dropout=lora_dropout, top_k_layers=top_k_layers))
    model.train()
    enc, _ = encode_examples(tokenizer, Task(tuple(labels)), rows, 384)
    collator = PackedCollator(packing, pad_id=tokenizer.pad_token_id or 0, segments=segments)
    return model, lambda: [collator(enc)], lambda m, b: answer_only_loss(m, b)[0]


def baseline_step(folder: Path, n: int):
    from transformers import DataCollatorForSeq2Seq

    _, _, raw = _rows(n)
    model, tokenizer = baseline.load_model(folder)
    model = baseline.add_lora(model)
    model.gradient_checkpointing_enable()  # what Trainer(gradient_checkpointing=True) calls
    model.train()
    ds = baseline.encode_dataset(tokenizer, raw)
    collator = DataCollatorForSeq2Seq(tokenizer=tokenizer, padding=True)
    feats = [ds[i] for i in range(len(ds))]
    return (model, lambda: [collator(feats[i:i + 4]) for i in range(0, len(feats), 4)],
            lambda m, b: m(**b).loss / 4)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", choices=["nerft", "baseline"], required=True)
    p.add_argument("--model", default="demo")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--top", type=int, default=18)
    p.add_argument("--steps", type=int, default=0, help="then time this many more whole steps, "
                   "with the process's user/system CPU time and page faults per step")
    p.add_argument("--lora-dropout", type=float, default=0.1,
                   help="nerft side: LoRA dropout (0.1 is the recipe's; 0 shows what dropout costs)")
    p.add_argument("--packing", default="shared_prefix", choices=["shared_prefix", "flat", "none", "prefix_kv"],
                   help="nerft side: the micro-batch layout (training.packing)")
    p.add_argument("--top-k-layers", type=int, default=None,
                   help="nerft side: LoRA on the top K blocks only (method.top_k_layers)")
    p.add_argument("--packed-attention", default="grid", choices=["grid", "per_example"],
                   help="nerft side, shared_prefix: attention over the whole row with its mask, "
                        "or one example at a time (training.packed_attention)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (inductor, dynamic shapes: training's packed "
                        "rows change length every step) and time one warm-up step apart")
    args = p.parse_args(argv)
    source, folder = model_folder(args.model)
    model, collate, loss_fn = (nerft_step(source, args.rows, args.lora_dropout, args.packing,
                                          args.top_k_layers, args.packed_attention)
                               if args.side == "nerft"
                               else baseline_step(folder, args.rows))
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    if args.compile:
        model = torch.compile(model, dynamic=True)
        t = time.perf_counter()
        for b in collate():  # the compilation happens here, outside every figure below
            loss_fn(model, b).backward()
        opt.zero_grad(set_to_none=True)
        print(f"compile + first step: {time.perf_counter() - t:.1f}s", flush=True)
    t = time.perf_counter()
    batches = collate()
    times = {"collate": time.perf_counter() - t, "forward": 0.0, "backward": 0.0}
    print(f"{args.side}: {len(batches)} micro-batch(es), shapes "
          f"{[tuple(b['input_ids'].shape) for b in batches]}")
    with torch.profiler.profile(record_shapes=False) as prof:
        for b in batches:
            t = time.perf_counter()
            loss = loss_fn(model, b)
            times["forward"] += time.perf_counter() - t
            t = time.perf_counter()
            loss.backward()
            times["backward"] += time.perf_counter() - t
    t = time.perf_counter()
    opt.step()
    times["optimizer"] = time.perf_counter() - t
    total = sum(times.values())
    print("  ".join(f"{k} {v:.2f}s ({100 * v / total:.0f}%)" for k, v in times.items()))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    for step in range(args.steps):
        before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for b in collate():
            loss_fn(model, b).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t
        print(f"step {step + 1}: wall {wall:.1f}s  user {after.ru_utime - before.ru_utime:.1f}s  "
              f"system {after.ru_stime - before.ru_stime:.1f}s  "
              f"minor page faults {after.ru_minflt - before.ru_minflt:,}", flush=True)


if __name__ == "__main__":
    main()
