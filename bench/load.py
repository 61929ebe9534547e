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

With --hostile it then runs, on the batching server, a calm row of --hostile-clients clients
and the same clients beside a hostile client that loops over a feedback flood, a chunked body
past the cap, a lone surrogate and 64 sentences of 2,000 characters (issue 28). The hostile
row passes when the normal clients see no error, their p99 stays within 3x the calm row's, and
the server's peak RSS within the calm row's peak plus --rss-growth-mb.

    python -m bench.load demo --clients 1,8 --seconds 30 --hostile
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

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


def chunked_upload(url: str, total: int, path: str = "/v1/ner") -> tuple[int, str]:
    """POST `total` bytes in 64 KB chunks with no Content-Length; the status and body the server
    answers, read without ever finishing the upload (the server must answer at its cap)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b" " * 65536
        sent = 0
        try:
            while sent < total:
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the upload ended
        reply = b""
        try:
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                data = s.recv(65536)
                if not data:
                    break
                reply += data
        except ConnectionResetError:
            pass
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def hostile_requests(url: str) -> list[tuple[str, Callable[[], int]]]:
    """Issue 28 items 1-4 as (name, send -> HTTP status): a feedback flood, a chunked body past
    the cap, a lone surrogate, and 64 sentences of 2,000 characters."""
    json_headers = {"Content-Type": "application/json"}
    flood = json.dumps({"text": "a" * 20000, "entities": [{"text": "a", "label": "人名"}] * 20000},
                       ensure_ascii=False, separators=(",", ":")).encode()
    huge = json.dumps({"texts": ["长" * 2000] * 64}, ensure_ascii=False).encode()
    session = requests.Session()

    def post(path: str, body: bytes) -> int:
        return session.post(url + path, data=body, headers=json_headers, timeout=120).status_code

    return [("feedback_flood", lambda: post("/v1/feedback", flood)),
            ("chunked_oversized", lambda: chunked_upload(url, 2 * 2**20)[0]),
            ("lone_surrogate", lambda: post("/v1/ner", b'{"text": "\\ud800"}')),
            ("64x2000_chars", lambda: post("/v1/ner", huge))]


def hostile_client(url: str, stop: threading.Event) -> dict:
    """Send `hostile_requests` in a loop until `stop`; {name: {status: count}}."""
    seen: dict[str, dict[str, int]] = {}
    kinds = hostile_requests(url)
    while not stop.is_set():
        for name, send in kinds:
            try:
                outcome = str(send())
            except (requests.RequestException, OSError) as e:
                outcome = type(e).__name__
            counts = seen.setdefault(name, {})
            counts[outcome] = counts.get(outcome, 0) + 1
    return seen


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc), in MiB; nan where unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def load(url: str, sentences: list[str], clients: int, seconds: float, max_requests: int,
         hostile: bool = False, server_pid: int | None = None) -> dict:
    """One row: `clients` threads sending one sentence each, back to back; with `hostile`, a
    hostile client (see `hostile_requests`) runs beside them. The server's peak RSS is sampled
    when its pid is given."""
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

    stop = threading.Event()
    peak_rss = [rss_mb(server_pid) if server_pid else float("nan")]
    hostile_seen: dict = {}

    def sample_rss() -> None:
        while not stop.wait(0.2):
            peak_rss[0] = max(peak_rss[0], rss_mb(server_pid))

    def attack() -> None:
        hostile_seen.update(hostile_client(url, stop))

    before = _batch_totals(requests.get(url + "/metrics", timeout=30).text)
    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    helpers = ([threading.Thread(target=sample_rss)] if server_pid else []) + \
              ([threading.Thread(target=attack)] if hostile else [])
    for t in threads + helpers:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    stop.set()
    for t in helpers:
        t.join()
    after = _batch_totals(requests.get(url + "/metrics", timeout=30).text)
    calls = after[1] - before[1]
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(latencies),
            "errors": len(errors), "error_kinds": sorted(set(errors)),
            "requests_per_s": round(len(latencies) / elapsed, 2),
            "sentences_per_s": round(len(latencies) / elapsed, 2),  # one sentence per request
            "p50_ms": round(1000 * percentile(latencies, 50)), "p95_ms": round(1000 * percentile(latencies, 95)),
            "p99_ms": round(1000 * percentile(latencies, 99)),
            "decode_calls": int(calls),
            "mean_batch": round((after[0] - before[0]) / calls, 2) if calls else None,
            "hostile": hostile_seen or None, "server_rss_peak_mb": round(peak_rss[0])
            if peak_rss[0] == peak_rss[0] else None}


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
    p.add_argument("--hostile", action="store_true", help="then, on the batching server, a calm "
                   "row and a hostile row of --hostile-clients clients (issue 28)")
    p.add_argument("--hostile-clients", type=int, default=8)
    p.add_argument("--rss-growth-mb", type=float, default=256, help="the hostile row passes when "
                   "the server's peak RSS stays within the calm row's peak plus this")
    args = p.parse_args(argv)
    sentences = read_sentences(args.sentences)
    modes = {"both": [True, False], "on": [True], "off": [False]}[args.batching]
    if args.hostile and True not in modes:
        p.error("--hostile runs on the batching server: use --batching on or both")
    servers = {}
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="nerft-load-"))  # the feedback log of the hostile row
    try:
        for batching in modes:  # both servers stay up; the idle one costs memory, not CPU
            extra = args.serve_args.split()
            if batching and args.hostile:
                extra += ["--feedback", str(scratch / "feedback.jsonl")]
            servers[batching] = start_server(args.model, batching, extra)
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
        if args.hostile:
            rows += hostile_rows(*servers[True], sentences, args)
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
        shutil.rmtree(scratch, ignore_errors=True)
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
        batching = r["batching"] + (f" ({r['row']})" if "row" in r else "")
        print(f"| {batching} | {r['clients']} | {r['requests']} | {r['errors']} | {r['requests_per_s']} "
              f"| {r['sentences_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['mean_batch']} |")
    for r in rows:
        if r.get("row") == "hostile":
            print(f"\nhostile row: {r['errors']} errors for the normal clients, p99 {r['p99_vs_calm']}x "
                  f"the calm row's (limit 3x), server RSS peak {r['server_rss_peak_mb']} MiB (bound "
                  f"{r['rss_bound_mb']} MiB): {'PASSED' if r['passed'] else 'FAILED'}")
            print("hostile requests (HTTP status: count): " + json.dumps(r["hostile"]))
    return rows


def hostile_rows(proc: subprocess.Popen, url: str, sentences: list[str], args) -> list[dict]:
    """A calm row, then the same clients beside a hostile client, on one server."""
    n = args.hostile_clients
    calm = {"batching": "on", "row": "calm",
            **load(url, sentences, n, args.seconds, args.max_requests, server_pid=proc.pid)}
    print(json.dumps(calm, ensure_ascii=False), flush=True)
    hostile = {"batching": "on", "row": "hostile",
               **load(url, sentences, n, args.seconds, args.max_requests, hostile=True,
                      server_pid=proc.pid)}
    hostile["p99_vs_calm"] = round(hostile["p99_ms"] / max(calm["p99_ms"], 1), 2)
    hostile["rss_bound_mb"] = round((calm["server_rss_peak_mb"] or 0) + args.rss_growth_mb)
    hostile["passed"] = (hostile["errors"] == 0 and hostile["p99_vs_calm"] <= 3
                         and (hostile["server_rss_peak_mb"] or 0) <= hostile["rss_bound_mb"])
    print(json.dumps(hostile, ensure_ascii=False), flush=True)
    return [calm, hostile]


if __name__ == "__main__":
    main()
