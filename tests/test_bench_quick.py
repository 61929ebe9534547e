"""`python -m bench.run --quick` and `bench/gpu.sh --cpu-smoke` run end to end and report every figure."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0


def _unit(x) -> bool:
    return isinstance(x, (int, float)) and 0.0 <= x <= 1.0


def test_quick_bench_reports_every_figure(tmp_path, shared_data):
    env = {**os.environ, "NERFT_DATA": str(shared_data)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--name", "ci", "--out", str(tmp_path / "out"),
         "--work", str(tmp_path / "work")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads((tmp_path / "out" / "ci.json").read_text(encoding="utf-8"))
    table = (tmp_path / "out" / "ci.md").read_text(encoding="utf-8")
    assert "| train samples/s" in table and "| test F1" in table

    m = r["machine"]
    assert m["cpu"] and m["cores"] >= 1 and m["torch"] and m["transformers"] and m["peft"] and m["date"]
    assert _positive(m["matmul_fp32_peak"]["gflop_per_s"])
    assert isinstance(r["contention"]["contended"], bool)
    assert r["rows"]["same_training_order"] is True  # both sides saw the same rows in the same order

    for side in ("baseline", "nerft"):
        t = r["train"][side]
        assert t["samples"] >= r["rows"]["samples"]
        for key in ("samples_per_s", "answer_tokens_per_s", "tokenise_seconds", "executed_flops",
                    "achieved_gflop_per_s", "tokens_computed_per_sample"):
            assert _positive(t[key]), (side, key, t[key])
        assert 0 < t["utilisation_of_matmul_peak"] < 1.5
        assert _positive(t["memory"]["train_mib"]) and _positive(t["memory"]["process_max_rss_mib"])
        assert _unit(t["f1_at_samples"]["f1"]) and _unit(t["f1_at_samples"]["parse_rate"])
        assert t["f1_at_samples"]["samples"] == r["rows"]["samples"]
        i = r["infer"][side]
        assert i["sentences"] == r["rows"]["test"] and _positive(i["sentences_per_s"])
        assert _unit(i["f1"]) and _unit(i["parse_rate"]) and _positive(i["memory"]["infer_mib"])
    nerft = r["train"]["nerft"]
    assert _positive(nerft["samples_per_s_at_samples"]) and _unit(nerft["f1_before_training"])
    wall = nerft["f1_at_wall_budget"]
    assert _unit(wall["f1"]) and wall["samples"] >= r["rows"]["samples"]
    # nerft computes each system prompt once per micro-batch, so fewer positions per sample
    assert nerft["tokens_computed_per_sample"] < r["train"]["baseline"]["tokens_computed_per_sample"]
    for key, value in r["ratios"].items():
        assert isinstance(value, (int, float)), key


def test_gpu_script_smoke_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--cpu-smoke", "--steps", "1",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["smoke"] is True and {t["side"] for t in r["train"]} == {"baseline", "nerft"}
    for t in r["train"]:
        assert _positive(t["tokens_per_s"]) and _positive(t["mfu"]) and _positive(t["hfu"])
    assert _positive(r["generation"]["batched_tokens_per_s"]) and _positive(r["speedup_tokens_per_s"])
