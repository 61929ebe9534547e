"""Facts about the machine a benchmark ran on, and its measured fp32 matmul peak."""

from __future__ import annotations

import datetime
import os
import platform
import time


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    except OSError:
        pass
    return []


def matmul_peak_gflops(n: int = 2048, seconds: float = 3.0) -> dict:
    """Best fp32 GFLOP/s of an n x n x n torch matmul (2n^3 FLOPs), over `seconds` of repeats."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.matmul(a, b, out=out)  # warm-up
    best, runs, end = 0.0, 0, time.perf_counter() + seconds
    while time.perf_counter() < end or runs < 3:
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        took = time.perf_counter() - start
        best = max(best, 2 * n ** 3 / took / 1e9)
        runs += 1
    return {"n": n, "runs": runs, "threads": torch.get_num_threads(), "gflop_per_s": round(best, 1)}


def other_heavy_processes(threshold_pct: float = 30.0, sample_s: float = 1.0) -> list[dict]:
    """Processes outside this one and its children using more than `threshold_pct` of a core."""
    import psutil

    me = psutil.Process()
    ours = {me.pid, *(p.pid for p in me.children(recursive=True))}
    procs = [p for p in psutil.process_iter(["pid", "name", "cmdline"]) if p.pid not in ours]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(sample_s)
    heavy = []
    for p in procs:
        try:
            pct = p.cpu_percent(None)
        except psutil.Error:
            continue
        if pct >= threshold_pct:
            cmd = " ".join(p.info.get("cmdline") or [p.info.get("name") or "?"])
            heavy.append({"pid": p.pid, "cpu_pct": round(pct), "cmd": cmd[:120]})
    return heavy


def machine_facts() -> dict:
    import peft
    import torch
    import transformers

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__,
    }
