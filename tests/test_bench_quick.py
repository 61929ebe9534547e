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


def _close(a, b, rel=2e-3) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b))


def test_quick_bench_reports_every_figure(tmp_path, shared_data):
    env = {**os.environ, "NERFT_DATA": str(shared_data)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--name", "ci", "--out", str(tmp_path / "out"),
         "--work", str(tmp_path / "work"), "--baseline-reader-batch", "4"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads((tmp_path / "out" / "ci.json").read_text(encoding="utf-8"))
    table = (tmp_path / "out" / "ci.md").read_text(encoding="utf-8")
    assert table in done.stdout  # what is printed is what is written

    m = r["machine"]
    assert m["cpu"] and m["cores"] >= 1 and m["torch"] and m["transformers"] and m["peft"] and m["date"]
    assert _positive(m["matmul_fp32_peak"]["gflop_per_s"])
    assert isinstance(r["contention"]["contended"], bool)
    rows = r["rows"]
    assert rows["same_training_order"] is True  # both sides saw the same rows in the same order
    base, ours = r["train"]["baseline"], r["train"]["nerft"]
    # The same LoRA starting weights on both sides (and a checksum that is not trivially 0).
    assert _positive(base["lora_init_checksum"])
    assert _close(base["lora_init_checksum"], ours["lora_init_checksum"], 1e-6)
    assert base["samples"] == rows["samples"] and ours["samples"] >= rows["samples"]
    assert base["order"][:rows["samples"]] == ours["order"][:rows["samples"]]

    for side, t in (("baseline", base), ("nerft", ours)):
        for key in ("samples_per_s", "answer_tokens_per_s", "tokenise_seconds", "executed_flops",
                    "achieved_gflop_per_s", "tokens_computed_per_sample"):
            assert _positive(t[key]), (side, key, t[key])
        # Speeds are the counts over the measured time, not something else.
        assert _close(t["samples_per_s"], t["samples"] / t["train_seconds"])
        assert _close(t["answer_tokens_per_s"], t["answer_tokens"] / t["train_seconds"])
        assert 0 < t["utilisation_of_matmul_peak"] < 1.5
        assert _positive(t["memory"]["train_mib"]) and _positive(t["memory"]["process_max_rss_mib"])
        # F1 after the same number of samples, with each side's own reader and with the shared one.
        q = t["f1_at_samples"]
        assert q["samples"] == rows["samples"], side
        for reader in (q, q["common_reader"]):
            assert _unit(reader["f1"]) and _unit(reader["parse_rate"]), side
    f1_rows = [line for line in table.splitlines() if line.startswith(f"| val F1 after {rows['samples']} samples")]
    assert len(f1_rows) == 2  # own reader, same reader
    # --baseline-reader-batch 4: the worked example's reader took 4 sentences per generate
    # call, and the table says how many answers one-at-a-time decoding repeated
    own = base["f1_at_samples"]
    assert own["reader_batch"] == 4 and own["reader_check"]["rows"] == rows["val"]
    assert (f"gave the same answer for {own['reader_check']['identical']} of its first "
            f"{rows['val']} rows") in table
    assert f"{base['f1_at_samples']['f1']:.3f}" in f1_rows[0] and f"{ours['f1_at_samples']['f1']:.3f}" in f1_rows[0]
    assert (f"{base['f1_at_samples']['common_reader']['f1']:.3f}" in f1_rows[1]
            and f"{ours['f1_at_samples']['common_reader']['f1']:.3f}" in f1_rows[1])
    assert abs(r["ratios"]["f1_at_samples_common_reader_minus_baseline"]
               - (ours["f1_at_samples"]["common_reader"]["f1"] - base["f1_at_samples"]["common_reader"]["f1"])) < 1e-9
    assert _unit(ours["f1_before_training"])

    # Equal time: the reported gap is the difference of the two measured training times.
    wall = ours["f1_at_wall_budget"]
    assert _unit(wall["f1"]) and wall["samples"] >= rows["samples"]
    assert _close(r["train_time_gap_s"], wall["train_seconds"] - base["train_seconds"], 1e-6)
    assert f"gap {r['train_time_gap_s']:,.1f} s" in table

    # (a) each user's own setup: the baseline runs its own adapter unmerged, nerft its own merged.
    ib, inn = r["infer"]["baseline"], r["infer"]["nerft"]
    assert ib["adapter"] == base["adapter"] and not ib["merged"]
    assert inn["adapter"] == ours["adapter"] and inn["merged"]
    # (b) equal work: the same merged adapter and budgets on both decoders; greedy decoding of the
    # same model then gives the same answers, so the speeds compare the same work.
    eq = r["infer"]["equal_work"]
    eh, en = eq["model_generate"], eq["nerft"]
    assert eh["adapter"] == en["adapter"] == ours["adapter"] and eh["merged"] and en["merged"]
    assert eq["identical_answers"] == eq["sentences"] == rows["test"]
    assert eh["generated_tokens"] == en["generated_tokens"] > 0
    assert eh["answer_tokens"] == en["answer_tokens"]
    for i in (ib, inn, eh, en):
        assert i["sentences"] == rows["test"] and _unit(i["f1"]) and _unit(i["parse_rate"])
        assert _close(i["sentences_per_s"], i["sentences"] / i["seconds"])
        assert _close(i["answer_tokens_per_s"], i["answer_tokens"] / i["seconds"])
        assert _positive(i["memory"]["infer_mib"])
    for i in (eh, en):
        assert _close(i["generated_tokens_per_s"], i["generated_tokens"] / i["seconds"])
    assert _close(eq["sentences_per_s"], en["sentences_per_s"] / eh["sentences_per_s"])
    assert f"| sentences/s ({rows['test']} test rows) | {eh['sentences_per_s']:,.3f} | {en['sentences_per_s']:,.3f}" in table
    assert f"| sentences/s ({rows['test']} test rows) | {ib['sentences_per_s']:,.3f} | {inn['sentences_per_s']:,.3f}" in table
    assert f"{eq['identical_answers']} of {eq['sentences']}" in table
    # nerft computes each system prompt once per micro-batch, so fewer positions per sample
    assert ours["tokens_computed_per_sample"] < base["tokens_computed_per_sample"]
    for key, value in r["ratios"].items():
        assert isinstance(value, (int, float)), key
    assert r["sides_reused"] == {} and "earlier invocation" not in table

    # A run stopped before its last side goes on with --resume: the finished sides are reused
    # (the table names each with when it ran), only the missing one runs.
    work = tmp_path / "work"
    ran = {tag: json.loads((work / f"{tag}.json").read_text(encoding="utf-8"))["ran"]
           for tag in ("train-baseline", "train-nerft", "infer-baseline", "infer-nerft", "infer-equal-hf")}
    (work / "infer-equal-nerft.json").unlink()
    again = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--name", "ci2", "--out", str(tmp_path / "out"),
         "--work", str(work), "--resume", "--baseline-reader-batch", "4"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[bench] infer-equal-nerft done" in again.stderr
    r2 = json.loads((tmp_path / "out" / "ci2.json").read_text(encoding="utf-8"))
    table2 = (tmp_path / "out" / "ci2.md").read_text(encoding="utf-8")
    assert r2["sides_reused"] == ran
    for side in ("baseline", "nerft"):  # the same figures; only the share of this run's peak moves
        earlier, now = dict(r["train"][side]), dict(r2["train"][side])
        earlier.pop("utilisation_of_matmul_peak"), now.pop("utilisation_of_matmul_peak")
        assert now == earlier, side
    assert r2["infer"]["baseline"] == r["infer"]["baseline"]
    assert r2["infer"]["equal_work"]["identical_answers"] == rows["test"]
    assert "**Sides measured by an earlier invocation**" in table2
    assert f"train-baseline ({ran['train-baseline']['started']}, " in table2
    # Other settings are never mixed with what the folder holds.
    other = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--name", "ci3", "--out", str(tmp_path / "out"),
         "--work", str(work), "--resume", "--samples", "32"], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=900)
    assert other.returncode != 0
    assert "--resume: " in other.stderr and "was run with other settings (" in other.stderr
    assert "samples" in other.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out" / "ci3.json").exists()


def test_gpu_script_smoke_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--cpu-smoke", "--steps", "1",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["smoke"] is True and [t["side"] for t in r["train"]] == [
        "baseline", "nerft", "nerft-dropout-0", "nerft-dropout-0-top-1",  # tiny: 2 blocks
        "nerft-dropout-0-compact"]
    by_side = {t["side"]: t for t in r["train"]}
    # compact answers: the same sentences, fewer answer tokens per step
    assert by_side["nerft-dropout-0-compact"]["answer_tokens_per_s"] * by_side["nerft-dropout-0-compact"][
        "seconds_per_step"] < by_side["nerft-dropout-0"]["answer_tokens_per_s"] * by_side["nerft-dropout-0"][
        "seconds_per_step"]
    for t in r["train"]:
        assert _positive(t["tokens_per_s"]) and _positive(t["mfu"]) and _positive(t["hfu"])
    assert _positive(r["generation"]["batched_tokens_per_s"]) and _positive(r["speedup_tokens_per_s"])
