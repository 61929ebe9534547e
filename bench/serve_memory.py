"""Memory of `nerft serve` with one run and with two runs of the same base model (issue 30 item 2).

    python -m bench.serve_memory                 # the demo model; writes bench/results/serve-memory.json
    python -m bench.serve_memory --model PATH    # another base model folder

It writes two LoRA runs of the base model the way `nerft train` leaves them (the demo recipe's
adapter shape: r 8, alpha 32, every projection), with random adapter weights: what is measured
is memory, not answers. Then it starts `nerft serve A` and `nerft serve A B`, one after the
other, sends each served run one request (so every lazy buffer exists), and reads the server's
resident memory (VmRSS) and its peak (VmHWM) from /proc. Two separate servers would need twice
the one-run figure; the row says how much the second run adds in one process.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
from pathlib import Path

import requests

from bench.load import start_server, stop_server

SENTENCE = "张三在北京大学读书。"


def write_run(folder: Path, base: str, seed: int) -> Path:
    """A run folder as `nerft train` writes it, holding an untrained-shape LoRA of `base`."""
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model

    from nerft.config import ALL_PROJECTIONS
    from nerft.models.base import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(base, device="cpu")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, task_type="CAUSAL_LM",
                                                target_modules=list(ALL_PROJECTIONS)))
        with torch.no_grad():
            for name, p in lora.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.01)
    lora.save_pretrained(folder / "best")
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {"data": {"dir": str(folder / "data")}, "model": {"source": base},
         "method": {"kind": "lora", "lora_r": 8, "lora_alpha": 32}}), encoding="utf-8")
    (folder / "run.json").write_text(json.dumps(
        {"labels": ["地点", "人名", "地理实体", "组织"], "seed": seed}, ensure_ascii=False),
        encoding="utf-8")
    return folder


def memory_mb(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024)
    return {"rss_mb": fields["VmRSS"], "peak_rss_mb": fields["VmHWM"]}


def measure(runs: list[Path], threads: int) -> dict:
    proc, url = start_server(str(runs[0]), True, [*map(str, runs[1:]), "--threads", str(threads)])
    try:
        for run in runs:
            response = requests.post(url + "/v1/ner", json={"text": SENTENCE, "run": run.name},
                                     timeout=300)
            response.raise_for_status()
        served = [m["id"] for m in requests.get(url + "/v1/models", timeout=30).json()["data"]]
        return {"runs": served, **memory_mb(proc.pid)}
    finally:
        stop_server(proc)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo", help="base model source (default: the demo model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench/results/serve-memory.json"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nerft-serve-memory-") as tmp:
        a = write_run(Path(tmp) / "run-a", args.model, seed=1)
        b = write_run(Path(tmp) / "run-b", args.model, seed=2)
        one = measure([a], args.threads)
        two = measure([a, b], args.threads)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, shared",
              "model": args.model, "one_run": one, "two_runs": two,
              "two_over_one": round(two["rss_mb"] / one["rss_mb"], 2),
              "second_run_adds_mb": two["rss_mb"] - one["rss_mb"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main()
