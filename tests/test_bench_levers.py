"""`python -m bench.levers --quick`: one row per lever plus the baseline, all on equal terms."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# One process per lever: these four cover each kind of override (method, training, data, a
# top-K, levers joined by +); what every other name sets is checked without training, below.
# top-8 cannot run on the 4-block tiny model: its row must report that, not end the run.
LEVERS = ["default", "top-2", "top-8", "prefix-kv", "dropout-0+compact"]


def _close(a, b, rel=2e-3) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b))


def _unit(x) -> bool:
    return isinstance(x, (int, float)) and 0.0 <= x <= 1.0


def test_quick_levers_one_row_each_on_equal_terms(tmp_path, shared_data):
    env = {**os.environ, "NERFT_DATA": str(shared_data)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.levers", "--quick", "--name", "ci", "--out", str(tmp_path / "out"),
         "--work", str(tmp_path / "work"), "--levers", *LEVERS],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads((tmp_path / "out" / "ci.json").read_text(encoding="utf-8"))
    table = (tmp_path / "out" / "ci.md").read_text(encoding="utf-8")
    assert table in done.stdout  # what is printed is what is written

    base, all_rows = r["baseline"], r["levers"]
    assert [x["lever"] for x in all_rows] == LEVERS
    failed = all_rows[LEVERS.index("top-8")]
    assert not failed["ok"] and "top_k_layers=8" in failed["error"]
    assert f"| top-8 | method.top_k_layers=8 | failed: {failed['error_line']} |" in table
    rows = [x for x in all_rows if x is not failed]
    assert all(x["ok"] for x in [base, *rows]), [x.get("error_line") for x in [base, *rows]]
    by = {x["lever"]: x for x in rows}
    samples = r["rows"]["samples"]
    peak = r["machine"]["matmul_fp32_peak"]["gflop_per_s"]
    assert peak > 0
    assert by["default"]["method"]["lora_dropout"] == 0.1
    assert by["top-2"]["method"]["top_k_layers"] == 2 and by["default"]["method"]["top_k_layers"] is None
    assert by["prefix-kv"]["packing"] == "prefix_kv" and by["default"]["packing"] == "shared_prefix"
    both = by["dropout-0+compact"]
    assert both["overrides"] == ["method.lora_dropout=0", "data.answer_format=compact"]
    assert both["answer_format"] == "compact" and both["method"]["lora_dropout"] == 0
    assert by["default"]["answer_format"] == "json"
    # the compact answers of the same samples: fewer tokens to train on
    assert both["answer_tokens"] < 0.8 * by["default"]["answer_tokens"]

    for x in [base, *rows]:
        # the same first samples, in the same order, as the baseline
        assert x["samples"] == samples and len(x["order"]) == samples, x["lever"]
        assert x["order"] == base["order"], x["lever"]
        # speeds are counts over the measured time
        assert _close(x["samples_per_s"], x["samples"] / x["train_seconds"]), x["lever"]
        assert _close(x["answer_tokens_per_s"], x["answer_tokens"] / x["train_seconds"]), x["lever"]
        assert _close(x["samples_per_s_vs_baseline"], x["samples_per_s"] / base["samples_per_s"])
        assert _close(x["utilisation_of_matmul_peak"], x["achieved_gflop_per_s"] / peak)
        assert x["train_peak_rss_mib"] > 0 and x["trainable_parameters"] > 0
        # F1 after those samples (baseline: its own reader, on by default with --quick)
        assert _unit(x["f1"]) and _unit(x["parse_rate"]) and _unit(x["f1_common_reader"]), x["lever"]
        line = next(line for line in table.splitlines() if line.startswith(f"| {x['lever']} |"))
        for figure in (f"{x['samples_per_s']:,.3f}", f"{x['samples_per_s_vs_baseline']:,.2f}",
                       f"{x['answer_tokens_per_s']:,.1f}", f"{x['achieved_gflop_per_s']:.1f}",
                       f"{x['trainable_parameters']:,}", f"{x['f1']:.3f}",
                       f"{x['f1_common_reader']:.3f}"):
            assert figure in line, (x["lever"], figure, line)
    assert "the same rows in the same order as the baseline (checked)" in table
    for x in rows:
        assert x["same_order_as_baseline"] and x["same_lora_start_as_baseline"], x["lever"]
        assert x["f1_samples"] == samples
        if x["lever"] != "default":
            assert f"{x['f1'] - by['default']['f1']:+.3f}" in table

    # Adapting only the top blocks: fewer LoRA matrices, fewer trainable parameters (the tiny
    # model has 4 blocks, 7 adapted projections each); the shared ones start as the baseline's.
    assert by["default"]["lora_matrices"] == base["lora_matrices"] == 4 * 7
    assert by["top-2"]["lora_matrices"] == 2 * 7
    assert (by["top-2"]["trainable_parameters"] < by["default"]["trainable_parameters"]
            == by["dropout-0+compact"]["trainable_parameters"])


def test_every_lever_name_sets_its_overrides():
    import argparse

    import pytest

    from bench.levers import FULL_LEVERS, QUICK_LEVERS, lever_name, overrides_of

    assert overrides_of("default", 3) == []
    assert overrides_of("dropout-0", 3) == ["method.lora_dropout=0"]
    assert overrides_of("packing-flat", 3) == ["training.packing=flat"]
    assert overrides_of("prefix-kv", 3) == ["training.packing=prefix_kv"]
    assert overrides_of("compact", 3) == ["data.answer_format=compact"]
    assert overrides_of("top-16", 3) == ["method.top_k_layers=16"]
    assert overrides_of("combined", 3) == ["method.lora_dropout=0", "method.top_k_layers=3"]
    assert overrides_of("dropout-0+top-12+compact", 3) == [
        "method.lora_dropout=0", "method.top_k_layers=12", "data.answer_format=compact"]
    for name in [*FULL_LEVERS, *QUICK_LEVERS]:
        assert lever_name(name) == name
    for bad in ("dropout-1", "top-0", "default+fast"):
        with pytest.raises(argparse.ArgumentTypeError, match="unknown lever"):
            lever_name(bad)


def test_quick_time_to_f1_trains_past_samples_toward_the_target(tmp_path, shared_data):
    # A tiny random model never reaches F1 1.5: the lever trains on from --samples to --cap,
    # scored every 16 samples, and neither side's row claims a time.
    env = {**os.environ, "NERFT_DATA": str(shared_data)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.levers", "--quick", "--name", "ttf", "--out", str(tmp_path / "out"),
         "--work", str(tmp_path / "work"), "--levers", "default", "--samples", "16",
         "--every", "16", "--cap", "48", "--target", "1.5", "--no-common-reader",
         "--baseline-reader-batch", "4"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads((tmp_path / "out" / "ttf.json").read_text(encoding="utf-8"))
    table = (tmp_path / "out" / "ttf.md").read_text(encoding="utf-8")
    base, (lever,) = r["baseline"], r["levers"]
    assert r["time_to_f1"] == {"every": 16, "cap": 48, "target": 1.5, "target_from": "given (--target)"}
    assert [e["samples"] for e in base["curve"]] == [16]
    assert [e["samples"] for e in lever["curve"]] == [16, 32, 48]
    assert lever["samples"] == 48 and lever["f1_samples"] == 16  # the ablation's F1 stays at --samples
    assert lever["f1"] == lever["curve"][0]["f1"]
    clocks = [e["train_seconds"] for e in lever["curve"]]
    assert 0 < clocks[0] < clocks[1] < clocks[2] <= lever["train_seconds"] + 1e-3
    assert base["time_to_target"] is None and lever["time_to_target"] is None
    assert "| default |" in table and "| not within 48 samples | - | - |" in table
    assert base["f1_common_reader"] is None  # --no-common-reader holds for the baseline too
    # The baseline's snapshots were read 4 sentences per generate call, and the final adapter's
    # rows once more one at a time: the table says how many answers agreed.
    assert base["reader_batch"] == 4 and base["reader_check"]["rows"] == r["rows"]["val"]
    check = base["reader_check"]
    assert f"gave the same answer for {check['identical']} of its first {check['rows']} rows" in table


def test_the_batched_baseline_reader_answers_as_one_at_a_time(tiny_model_dir, shared_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.baseline import predict_all

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [json.loads(line) for line in (shared_data / "ccfbdci" / "ccfbdci.jsonl").open(encoding="utf-8")][:6]
    texts = [row["text"][:60] for row in rows]
    alone, alone_tokens, _ = predict_all(model, tokenizer, texts, 24)
    batched, batched_tokens, _ = predict_all(model, tokenizer, texts, 24, batch_size=4)
    assert batched == alone and batched_tokens == alone_tokens
    assert tokenizer.padding_side == AutoTokenizer.from_pretrained(tiny_model_dir).padding_side


def test_time_to_target_is_the_first_score_at_or_above_it():
    from bench.levers import time_to_f1_lines, time_to_target

    base_curve = [{"samples": 64, "train_seconds": 300.0, "f1": 0.2},
                  {"samples": 128, "train_seconds": 600.0, "f1": 0.4}]
    lever_curve = [{"samples": 64, "train_seconds": 60.0, "f1": 0.41},
                   {"samples": 128, "train_seconds": 120.0, "f1": 0.39}]
    assert time_to_target(base_curve, 0.4) == {"samples": 128, "train_seconds": 600.0, "f1": 0.4}
    assert time_to_target(lever_curve, 0.4)["samples"] == 64
    assert time_to_target(lever_curve, 0.5) is None
    assert time_to_target([{"samples": 0, "train_seconds": 0, "f1": 0.9}], 0.5) is None  # untrained
    r = {"time_to_f1": {"every": 64, "cap": 256, "target": 0.4, "target_from": "x"},
         "rows": {"val": 100, "samples": 128},
         "baseline": {"lever": "baseline", "ok": True, "curve": base_curve,
                      "time_to_target": time_to_target(base_curve, 0.4)},
         "levers": [{"lever": "default", "ok": True, "curve": lever_curve,
                     "time_to_target": time_to_target(lever_curve, 0.4)}]}
    lines = time_to_f1_lines(r)
    assert "| baseline | 64: 0.200, 128: 0.400 | 128 samples | 10.0 min | - |" in lines
    assert "| default | 64: 0.410, 128: 0.390 | 64 samples | 1.0 min | 10.00 |" in lines


def test_reuse_baseline_only_with_identical_settings(tmp_path):
    import pytest

    from bench.levers import reused_baseline

    spec = {"samples": 256, "val": 100, "eval_every_steps": 8}
    with pytest.raises(SystemExit, match="not found"):
        reused_baseline(tmp_path, spec)
    (tmp_path / "train-baseline.spec.json").write_text(json.dumps({**spec, "samples": 128}))
    (tmp_path / "train-baseline.json").write_text(json.dumps({"samples_per_s": 0.2}))
    with pytest.raises(SystemExit, match=r"other settings \(samples\)"):
        reused_baseline(tmp_path, spec)
    (tmp_path / "train-baseline.spec.json").write_text(json.dumps(spec))
    assert reused_baseline(tmp_path, spec) == {"samples_per_s": 0.2}


def test_the_table_names_levers_that_trained_on_other_rows():
    from bench.levers import same_rows_claim

    rows = [{"lever": "default", "ok": True, "same_order_as_baseline": True},
            {"lever": "compact", "ok": True, "same_order_as_baseline": False},
            {"lever": "top-8", "ok": False}]
    claim = same_rows_claim({"levers": rows})
    assert "but compact trained on other rows" in claim and "default" not in claim
    assert same_rows_claim({"levers": rows[:1]}).endswith("as the baseline (checked)")
