"""The same run served with `--backend hf` and `--backend vllm`: identical entities on the same
sentences, then sentences/s and p50/p99 latency at 1 and 32 clients for each (issue 30 item 1).
Run by bench/gpu-serve.sh on a CUDA machine.

    python -m bench.serve_backends RUN                      # CUDA: both backends
    python -m bench.serve_backends RUN --cpu-smoke          # CPU: the hf side only, short rows,
                                                            # and vllm's one-line refusal

Sentences: --sentences (.jsonl with "text", or .txt), else bench.load's hand-written ones,
cycled to --count (64). Each backend is started in turn (`nerft serve RUN --backend B`), gets
every sentence once (one per request) for the entity comparison, then the load rows
(`bench.load.load`: N threads, one sentence per POST /v1/ner, back to back). The script exits 1
when the backends disagree on any sentence, and writes its JSON to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import requests

from bench.load import SENTENCES, load, read_sentences, start_server, stop_server


def entities_of(url: str, sentences: list[str]) -> list[list[dict]]:
    out = []
    for text in sentences:
        response = requests.post(url + "/v1/ner", json={"text": text}, timeout=300)
        response.raise_for_status()
        out.append(response.json()["results"][0]["entities"])
    return out


def serve_and_measure(run: str, backend: str, sentences: list[str], clients: list[int],
                      seconds: float, serve_args: list[str]) -> dict:
    proc, url = start_server(run, True, ["--backend", backend, *serve_args])
    try:
        found = entities_of(url, sentences)
        rows = [load(url, sentences, n, seconds, max_requests=100_000, server_pid=proc.pid)
                for n in clients]
    finally:
        stop_server(proc)
    return {"backend": backend, "entities": found, "rows": rows}


def vllm_refusal(run: str) -> str:
    """What `nerft serve RUN --backend vllm` says where it cannot run (one line, exit 2)."""
    done = subprocess.run([sys.executable, "-m", "nerft", "serve", run, "--backend", "vllm"],
                          capture_output=True, text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    if done.returncode != 2 or len(lines) != 1:
        raise SystemExit(f"--backend vllm without a GPU: expected one line and exit 2, got "
                         f"{done.returncode}: {done.stderr[-2000:]}")
    return lines[0]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a demo-recipe run (or any run or export nerft serves)")
    p.add_argument("--cpu-smoke", action="store_true", help="hf only, short rows; checks that "
                   "--backend vllm refuses in one line here")
    p.add_argument("--sentences", type=Path)
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--clients", default="1,32")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--serve-args", default="--max-batch 32 --max-queue 1024")
    p.add_argument("--out", type=Path, default=Path("bench/results/gpu-serve.json"))
    args = p.parse_args(argv)
    base = read_sentences(args.sentences) if args.sentences else SENTENCES
    sentences = [base[i % len(base)] for i in range(args.count)]
    clients = [int(c) for c in args.clients.split(",")]
    backends = ["hf"] if args.cpu_smoke else ["hf", "vllm"]
    sides = [serve_and_measure(args.run, b, sentences, clients, args.seconds,
                               args.serve_args.split()) for b in backends]
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": _machine(), "run": str(args.run), "sentences": len(sentences),
              "smoke": args.cpu_smoke,
              "rows": [{"backend": s["backend"], **row} for s in sides for row in s["rows"]]}
    if args.cpu_smoke:
        result["vllm_here"] = vllm_refusal(args.run)
    else:
        hf, vllm = (s["entities"] for s in sides)
        result["differing_sentences"] = [i for i, (a, b) in enumerate(zip(hf, vllm)) if a != b]
        result["identical_entities"] = not result["differing_sentences"]
    result["entity_count"] = sum(len(e) for e in sides[0]["entities"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    for row in result["rows"]:
        print(f"{row['backend']:5} clients {row['clients']:3}: {row['sentences_per_s']:8.2f} "
              f"sentences/s  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  errors {row['errors']}")
    if not args.cpu_smoke:
        print("identical entities:", result["identical_entities"],
              result["differing_sentences"] or "")
    print(f"wrote {args.out}")
    if result.get("identical_entities") is False:
        raise SystemExit(1)
    return result


def _machine() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{platform.machine()} CPU"


if __name__ == "__main__":
    main()
