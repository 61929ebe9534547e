"""bench/gpu-serve.sh's CPU smoke path: the script runs end to end on the tiny run (hf side,
short load rows) and `--backend vllm` is refused here in one line. Its GPU path is the same
code with vLLM's side added (bench/serve_backends.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_serve_script_cpu_smoke(tiny_lora_run, tmp_path):
    out = tmp_path / "gpu-serve.json"
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu-serve.sh"), str(tiny_lora_run), "--cpu-smoke",
         "--count", "6", "--clients", "1,2", "--seconds", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["smoke"] and result["sentences"] == 6
    assert [(r["backend"], r["clients"]) for r in result["rows"]] == [("hf", 1), ("hf", 2)]
    for row in result["rows"]:
        assert row["errors"] == 0 and row["requests"] > 0 and row["p50_ms"] <= row["p99_ms"]
    assert "--backend vllm needs" in result["vllm_here"]
    assert "sentences/s" in done.stdout and "p99" in done.stdout
