"""Throughput of the two heads on the same rows, measured side by side in one process.

    python -m bench.heads --data /tmp/nerft-curve/data/ccfbdci --rounds 3 --steps 2 --sentences 16

Loads the demo model twice: with its own output layer (method.head generate) and with a
token-classification head (method.head tagger), each with the demo recipe's LoRA. Then, in
alternating rounds (so a change in the machine's load hits both alike): `--steps` training
steps (forward, backward, batch 4, the recipe's layouts: shared_prefix for generation, padded
sentences for the tagger) on the same training rows, and the same `--sentences` test sentences
decoded (greedy constrained generation by the untrained model, or one tagging pass). Prints and
writes bench/results/<name>.json: samples/s and sentences/s per head (medians over rounds).
F1 is not measured here (see `bench.curve --set method.head=tagger`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    import torch

    from bench.facts import machine_facts
    from nerft.config import MethodConfig
    from nerft.data.example import read_examples
    from nerft.data.prepared import PreparedData
    from nerft.infer.generate import DecodeOptions
    from nerft.infer.predict import decoder_for, predict_rows
    from nerft.models.base import load_model_and_tokenizer
    from nerft.task.bio import tag_names
    from nerft.task.prompt import Task
    from nerft.train.collate import PackedCollator, answer_only_loss
    from nerft.train.encode import encode_examples
    from nerft.train.method import apply_method
    from nerft.train.tagger import encode_tagged, tagging_loss

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a prepared folder")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="training steps per head per round")
    p.add_argument("--sentences", type=int, default=16, help="test sentences decoded per round")
    p.add_argument("--name", default="heads")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args(argv)
    data = PreparedData(args.data)
    task = Task(data.labels)
    train_rows = [ex for ex in read_examples(data.split("train")) if ex.entities]
    train_rows = train_rows[:4 * args.steps]
    test = [(ex.id, ex.text) for ex in list(read_examples(data.split("test")))[:args.sentences]]
    lora = dict(kind="lora", lora_r=8, lora_alpha=32, lora_dropout=0.0)

    heads = {}
    for head in ("generate", "tagger"):
        model, tok = load_model_and_tokenizer("demo", tags=tag_names(task.labels) if head == "tagger" else None)
        model, _ = apply_method(model, MethodConfig(head=head, **lora))
        if head == "tagger":
            enc, _, _ = encode_tagged(tok, task.labels, train_rows, 256)
            collate, loss = PackedCollator("none", pad_id=tok.pad_token_id), tagging_loss
        else:
            enc, _ = encode_examples(tok, task, train_rows, 256)
            collate, loss = PackedCollator("shared_prefix", pad_id=tok.pad_token_id), answer_only_loss
        heads[head] = dict(model=model, tok=tok, batches=[collate(enc[i:i + 4]) for i in range(0, len(enc), 4)],
                           loss=loss, train_s=[], infer_s=[],
                           tokens=sum(len(e) for e in enc))
    for _ in range(args.rounds):
        for head, h in heads.items():
            h["model"].train()
            started = time.perf_counter()
            for batch in h["batches"]:
                value, _ = h["loss"](h["model"], batch)
                value.backward()
            h["train_s"].append(time.perf_counter() - started)
            h["model"].zero_grad(set_to_none=True)
            started = time.perf_counter()
            with torch.no_grad():
                predict_rows(decoder_for(h["model"], h["tok"], task), test, DecodeOptions(batch_size=16))
            h["infer_s"].append(time.perf_counter() - started)
    samples = 4 * len(heads["tagger"]["batches"])
    results = {"command": "python -m bench.heads " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_facts(),
               "data": str(args.data), "training_rows": samples, "test_sentences": len(test), "heads": {}}
    for head, h in heads.items():
        results["heads"][head] = {
            "tokens_per_training_row": round(h["tokens"] / samples, 1),
            "train_samples_per_s": round(samples / statistics.median(h["train_s"]), 3),
            "infer_sentences_per_s": round(len(test) / statistics.median(h["infer_s"]), 2),
            "train_seconds": [round(s, 1) for s in h["train_s"]],
            "infer_seconds": [round(s, 1) for s in h["infer_s"]]}
        print(head, json.dumps(results["heads"][head]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return results


if __name__ == "__main__":
    main()
