"""Load test of `nerft serve` on the loopback interface: N concurrent clients for a fixed time,
with the batching worker on and off.

    python -m bench.load demo --clients 1,8 --seconds 30
    python -m bench.load runs/demo-cpu --clients 1,4,16 --seconds 60 --sentences data/ccfbdci/test.jsonl

It starts `nerft serve MODEL` in a subprocess on a free 127.0.0.1 port for each mode (--batching
on, off), warms both up, then for each client count, alternating the modes, runs that many
threads, each sending one sentence per POST /v1/ner back to back until SECONDS pass or
MAX_REQUESTS are sent (bounded either way). It prints requests/s, sentences/s, p50/p95/p99 latency and errors, and writes them
as JSON (--out). Sentences come from --sentences (.jsonl with "text", or .txt) or a built-in
hand-written list.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

# Hand-written sentences of varied length (not corpus text).
SENTENCES = [
    "张三在北京大学读书。",
    "李四昨天从上海飞到了广州。",
    "国务院总理今天在人民大会堂会见了法国外长。",
    "王五在杭州的阿里巴巴工作了五年，去年回到成都创业。",
    "联合国秘书长呼吁各方在日内瓦恢复谈判。",
    "小明和小红周末去了南京的中山陵。",
    "据新华社报道，长江中下游地区本周将迎来强降雨。",
    "这家公司的总部位于深圳，在香港和新加坡设有分部。",
    "今天天气很好，我们一起去公园散步吧。",
    "清华大学和北京大学的学生在颐和园举行了联欢活动。",
    "马来西亚总理访问了印度尼西亚首都雅加达。",
    "没有什么特别的事情发生。",
]


def read_sentences(path: Path | None) -> list[str]:
    if path is None:
        return list(SENTENCES)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [json.loads(line)["text"] for line in lines] if path.suffix == ".jsonl" else lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, batching: bool, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "nerft", "serve", model, "--port", str(port),
           "--batching" if batching else "--no-batching", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        try:
            if requests.get(url + "/health", timeout=1).ok:
                return proc, url
        except requests.ConnectionError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server not ready after 600 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]  # nearest rank


def load(url: str, sentences: list[str], clients: int, seconds: float, max_requests: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    sent = [0]
    stop_at = time.monotonic() + seconds

    def client(k: int) -> None:
        session = requests.Session()
        i = k
        while time.monotonic() < stop_at:
            with lock:
                if sent[0] >= max_requests:
                    return
                sent[0] += 1
            text = sentences[i % len(sentences)]
            i += clients
            started = time.perf_counter()
            try:
                response = session.post(url + "/v1/ner", json={"text": text}, timeout=300)
                ok = response.status_code == 200 and len(response.json()["results"]) == 1
                detail = f"HTTP {response.status_code}"
            except requests.RequestException as e:
                ok, detail = False, type(e).__name__
            with lock:
                (latencies.append(time.perf_counter() - started) if ok else errors.append(detail))

    before = _batch_totals(requests.get(url + "/metrics", timeout=30).text)
    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    after = _batch_totals(requests.get(url + "/metrics", timeout=30).text)
    calls = after[1] - before[1]
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(latencies),
            "errors": len(errors), "error_kinds": sorted(set(errors)),
            "requests_per_s": round(len(latencies) / elapsed, 2),
            "sentences_per_s": round(len(latencies) / elapsed, 2),  # one sentence per request
            "p50_ms": round(1000 * percentile(latencies, 50)), "p95_ms": round(1000 * percentile(latencies, 95)),
            "p99_ms": round(1000 * percentile(latencies, 99)),
            "decode_calls": int(calls),
            "mean_batch": round((after[0] - before[0]) / calls, 2) if calls else None}


def _batch_totals(metrics_text: str) -> tuple[float, float]:
    """(sentences decoded, decode calls) so far, from the service's /metrics."""
    values = {}
    for line in metrics_text.splitlines():
        name = line.split(" ")[0]
        if name in ("nerft_batch_sentences_sum", "nerft_batch_sentences_count"):
            values[name] = float(line.rsplit(" ", 1)[1])
    return values.get("nerft_batch_sentences_sum", 0.0), values.get("nerft_batch_sentences_count", 0.0)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="what `nerft serve` gets: a run, an export, or a model source")
    p.add_argument("--clients", default="1,8", help="comma-separated concurrent client counts")
    p.add_argument("--seconds", type=float, default=30, help="duration of each client count")
    p.add_argument("--max-requests", type=int, default=5000, help="cap per client count")
    p.add_argument("--batching", choices=["both", "on", "off"], default="both")
    p.add_argument("--sentences", type=Path, help=".jsonl (\"text\") or .txt, one sentence a line")
    p.add_argument("--serve-args", default="", help="extra `nerft serve` options, e.g. '--max-batch 32'")
    p.add_argument("--out", type=Path, default=Path("bench/results/load.json"))
    args = p.parse_args(argv)
    sentences = read_sentences(args.sentences)
    modes = {"both": [True, False], "on": [True], "off": [False]}[args.batching]
    servers = {}
    rows = []
    try:
        for batching in modes:  # both servers stay up; the idle one costs memory, not CPU
            servers[batching] = start_server(args.model, batching, args.serve_args.split())
            for text in sentences[:2]:  # warm-up: first calls pay one-off costs
                requests.post(servers[batching][1] + "/v1/ner", json={"text": text},
                              timeout=600).raise_for_status()
        # Modes alternate within each client count, so a change in the machine's other load
        # between runs shows up in both columns rather than as a difference between them.
        for clients in [int(c) for c in args.clients.split(",")]:
            for batching in modes:
                row = {"batching": "on" if batching else "off",
                       **load(servers[batching][1], sentences, clients, args.seconds, args.max_requests)}
                rows.append(row)
                print(json.dumps(row, ensure_ascii=False), flush=True)
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    report = {"command": " ".join([Path(sys.executable).name, "-m", "bench.load", *(argv or sys.argv[1:])]),
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print("| batching | clients | requests | errors | requests/s | sentences/s | p50 ms | p95 ms | p99 ms | mean batch |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batching']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['requests_per_s']} "
              f"| {r['sentences_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['mean_batch']} |")
    return rows


if __name__ == "__main__":
    main()
