"""Baseline (the worked example's recipe, bench/baseline.py) vs nerft, side by side.

    python -m bench.run --quick                 # tiny random model, ~1-2 minutes (CI)
    python -m bench.run --model demo --name demo-cpu

One invocation: the same model, the same training rows in the same order, the same validation
and test rows. Each side trains in its own process (bench/sides.py), then each decoder runs in
its own process on the same trained adapter (nerft's), so peak memory and timings are per side.
Writes bench/results/<name>.json and <name>.md and prints the table.

A full run on the demo model takes hours on 2 CPU cores. `--work DIR --resume` splits it: every
side that finished in DIR with the same settings is reused (its own date, seconds and load are
in the result and the table names it), so a stopped run goes on where it stopped:

    python -m bench.run --model demo --name demo-cpu --work ~/.cache/nerft/bench-demo-cpu --resume

Quality: both sides start from the same LoRA weights (bench.instrument.same_lora_init) and are
scored on the same validation rows twice: with each side's own reader (the baseline: the
example's decoding, 512 tokens, its stop rule, its back-to-back object format; nerft: its
constrained decoder) and with one reader shared by both (each side's own prompt, no constraint,
greedy `model.generate`, nerft's per-sentence budget and stop tokens, the same parser). nerft is
evaluated after the same number of samples as the baseline and, unless --no-equal-time, keeps
training (same rows, same order) while the next step is predicted to end within the baseline's
training time; both times are reported. The learning rate is constant on both sides.

Inference is reported twice: (a) as each user gets it (the example's own adapter, unmerged, its
512-token budget, stop rule and format; nerft's adapter merged, constrained), and (b) at equal
work (nerft's adapter merged, nerft's prompts, the same per-sentence budget and stop tokens, no
constraint): `model.generate` one sentence at a time vs nerft's batched decoder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.facts import machine_facts, matmul_peak_gflops, other_heavy_processes
from bench.report import markdown_table

REPO = Path(__file__).resolve().parents[1]
MAX_TEXT_CHARS = 200  # longer rows are left out so that neither side truncates or drops a row


def data_dir() -> Path:
    return Path(os.environ.get("NERFT_DATA", REPO.parent / "shared" / "data"))


def add_shared_options(p: argparse.ArgumentParser) -> None:
    """The options bench.run and bench.levers share (FLOPs, threads, data, output, scratch)."""
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument("--data", type=Path, default=None, help="ccfbdci.jsonl (default $NERFT_DATA)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    p.add_argument("--baseline-reader-batch", type=int, default=1, metavar="N",
                   help="score the baseline's adapter (bench.levers: its snapshots) N "
                        "sentences per generate call (its "
                        "prompt, greedy, stop ids and budget, left-padded; scoring is off the "
                        "clock); the final adapter's first 16 rows are also decoded one at a "
                        "time and the identical answers counted. Default 1: one at a time, as "
                        "the worked example decodes")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny random model, a few steps (CI)")
    p.add_argument("--model", default=None, help="'tiny', 'demo' or a model folder (default: "
                   "tiny with --quick, else demo)")
    p.add_argument("--name", default=None, help="results file name (default: quick or the model)")
    p.add_argument("--samples", type=int, default=None, help="training samples per side, a "
                   "multiple of 16 (default 16 quick, 32 full)")
    p.add_argument("--val", type=int, default=None, help="validation rows (default 8 / 100)")
    p.add_argument("--test", type=int, default=None, help="test rows for inference (default 2 / 32)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="the baseline decoder's "
                   "budget (default: the recipe's 512; 64 with --quick, where a random model "
                   "never stops)")
    p.add_argument("--tokenise-rows", type=int, default=None,
                   help="training rows to time tokenisation on (default 500 / all)")
    p.add_argument("--no-equal-time", action="store_true",
                   help="do not continue nerft's run to the baseline's training time")
    p.add_argument("--resume", action="store_true", help="reuse every side that finished in "
                   "--work with the same settings; run only the others")
    add_shared_options(p)
    args = p.parse_args(argv)
    if args.resume and args.work is None:
        p.error("--resume needs --work: the folder of the run to go on with")
    quick = args.quick
    args.model = args.model or ("tiny" if quick else "demo")
    args.name = args.name or ("quick" if quick else Path(args.model).name)
    args.samples = args.samples or (16 if quick else 32)
    args.val = args.val or (8 if quick else 100)
    args.test = args.test or (2 if quick else 32)
    args.max_new_tokens = args.max_new_tokens or (64 if quick else 512)
    if args.tokenise_rows is None:
        args.tokenise_rows = 500 if quick else 10**9
    if args.samples % 16:
        p.error("--samples must be a multiple of 16 (one optimizer step is 16 samples on both sides)")
    args.data = args.data or data_dir() / "ccfbdci" / "ccfbdci.jsonl"
    return args


def model_folder(model: str, tiny_layers: int = 2) -> tuple[str, Path]:
    """(source nerft is given, folder the baseline loads)."""
    from nerft.models.base import resolve_model

    if model == "tiny":
        from tests.tiny import tiny_qwen2

        folder = tiny_qwen2(layers=tiny_layers)
        return str(folder), folder
    return model, resolve_model(model)


def select_rows(data: Path, args) -> dict:
    """The rows both sides use, from nerft's prepared ccfbdci splits, with their raw originals."""
    from bench.baseline import read_raw_rows
    from nerft.data.prepare import prepare

    prep = prepare([data])
    by_text: dict[str, dict] = {}
    for row in read_raw_rows(data):
        by_text.setdefault(row["text"], row)

    def usable(split):
        return [ex for ex in prep.splits[split] if len(ex.text) <= MAX_TEXT_CHARS and ex.text in by_text]

    pool = 8 * args.samples  # nerft may run past the baseline's samples when time allows
    train = usable("train")
    return {"labels": prep.labels, "train": train[:pool], "val": usable("val")[:args.val],
            "test": usable("test")[:args.test], "tokenise": train[:args.tokenise_rows],
            "raw": by_text}


def write_work(work: Path, rows: dict) -> None:
    from nerft.data.example import write_jsonl

    (work / "data").mkdir(parents=True, exist_ok=True)
    for name in ("train", "val", "test", "tokenise"):
        write_jsonl(work / "data" / f"{name}.jsonl", (ex.to_dict() for ex in rows[name]))
    (work / "data" / "stats.json").write_text(json.dumps({"labels": rows["labels"]}, ensure_ascii=False))
    for name, file in (("train", "train_raw.jsonl"), ("tokenise", "tokenise_raw.jsonl")):
        write_jsonl(work / file, (rows["raw"][ex.text] for ex in rows[name]))


def prepare_work(args, tiny_layers: int = 2) -> tuple[Path, dict, dict]:
    """Select the rows, write them to the scratch folder; return (work, rows, the spec every
    side reads). Shared by bench.run and bench.levers."""
    source, folder = model_folder(args.model, tiny_layers)
    rows = select_rows(args.data, args)
    work = args.work or Path(tempfile.mkdtemp(prefix="nerft-bench-"))
    write_work(work, rows)
    spec = {"work": str(work), "model_source": source, "model_folder": str(folder),
            "labels": rows["labels"], "samples": args.samples, "seed": 42,
            "count_flops": not args.no_flops, "threads": args.threads,
            "max_new_tokens": args.max_new_tokens,
            # A random model never stops: --quick caps nerft's per-sentence budget (same cap
            # on every side that uses it) so the quick bench stays quick.
            "budget_cap": args.max_new_tokens if args.quick else None,
            "nerft_max_steps": len(rows["train"]) // 16,
            # the worked example's reader, N sentences per generate call (off the clock)
            **({"baseline_reader_batch": args.baseline_reader_batch}
               if args.baseline_reader_batch > 1 else {})}
    return work, rows, spec


class SideFailed(SystemExit):
    """A side's process failed. A SystemExit, so that bench.run stops with the log tail;
    bench.levers catches it and reports the failure in that lever's row."""


def run_side(role: str, spec: dict, work: Path, tag: str | None = None) -> dict:
    """Run one side in its own process; `tag` names its files (default: the role). The result
    records when it ran, for how long and at what load (`ran`), so that a side reused by a later
    invocation still says so."""
    tag = tag or role
    spec_path, out_path, log_path = work / f"{tag}.spec.json", work / f"{tag}.json", work / f"{tag}.log"
    out_path.unlink(missing_ok=True)  # a result left by a failed or changed run is never reused
    spec_path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    print(f"[bench] {tag} ... (log: {log_path})", file=sys.stderr, flush=True)
    started_utc = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        done = subprocess.run([sys.executable, "-m", "bench.sides", role, str(spec_path), str(out_path)],
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SideFailed(f"[bench] {tag} failed (exit {done.returncode}); log tail:\n{tail}")
    seconds = time.perf_counter() - start
    print(f"[bench] {tag} done in {seconds:.0f} s", file=sys.stderr, flush=True)
    result = json.loads(out_path.read_text(encoding="utf-8"))
    result["ran"] = {"started": started_utc, "seconds": round(seconds, 1),
                     "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    out_path.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    return result


def reused_side(work: Path, tag: str, spec: dict, option: str) -> dict | None:
    """The result of side `tag` finished earlier in `work` with exactly `spec` (same rows, model,
    samples, checkpoints and readers); None when it never finished there. Other settings are a
    clear error: mixing them would compare different work."""
    spec_path, out_path = work / f"{tag}.spec.json", work / f"{tag}.json"
    if not out_path.is_file():
        return None
    earlier = json.loads(spec_path.read_text(encoding="utf-8"))
    differs = sorted(k for k in set(earlier) | set(spec) if earlier.get(k) != spec.get(k))
    if differs:
        raise SystemExit(f"{option}: {spec_path} was run with other settings "
                         f"({', '.join(differs)}); use another --work or run without {option}")
    print(f"[bench] {tag} reused from {out_path}", file=sys.stderr, flush=True)
    return json.loads(out_path.read_text(encoding="utf-8"))


def ratio(a, b):
    return a / b if a is not None and b else None


def compare(base: dict, ours: dict, inf_base: dict, inf_ours: dict, samples: int) -> dict:
    """nerft / baseline for every speed and memory figure (above 1: nerft higher)."""
    base_mem, ours_mem = base["memory"], ours["memory"]
    return {
        "train_samples_per_s": ratio(ours["samples_per_s_at_samples"], base["samples_per_s"]),
        "train_answer_tokens_per_s": ratio(ours["answer_tokens_per_s"], base["answer_tokens_per_s"]),
        "tokens_computed_per_sample": ratio(ours["tokens_computed_per_sample"], base["tokens_computed_per_sample"]),
        "executed_gflop_per_sample": ratio(ours["executed_gflop_per_sample"], base["executed_gflop_per_sample"]),
        "train_peak_rss": ratio(ours_mem.get("train_mib"), base_mem.get("train_mib")),
        "tokenise_seconds": ratio(ours["tokenise_seconds"], base["tokenise_seconds"]),
        "user_infer_sentences_per_s": ratio(inf_ours["sentences_per_s"], inf_base["sentences_per_s"]),
        "user_infer_peak_rss": ratio(inf_ours["memory"].get("infer_mib"), inf_base["memory"].get("infer_mib")),
        "f1_at_samples_own_reader_minus_baseline": ours["f1_at_samples"].get("f1", 0) - base["f1_at_samples"]["f1"],
        "f1_at_samples_common_reader_minus_baseline": (
            ours["f1_at_samples"].get("common_reader", {}).get("f1", 0)
            - base["f1_at_samples"]["common_reader"]["f1"]),
    }


def equal_work(hf: dict, ours: dict) -> dict:
    """The same work on both sides: how often the answers agree, and nerft / model.generate."""
    same = sum(a == b for a, b in zip(hf["all_answers"], ours["all_answers"]))
    return {"identical_answers": same, "sentences": hf["sentences"],
            "sentences_per_s": ratio(ours["sentences_per_s"], hf["sentences_per_s"]),
            "answer_tokens_per_s": ratio(ours["answer_tokens_per_s"], hf["answer_tokens_per_s"]),
            "generated_tokens_per_s": ratio(ours["generated_tokens_per_s"], hf["generated_tokens_per_s"])}


def machine_before(quick: bool) -> tuple[list, dict, dict]:
    """Before a bench run: other heavy processes (contention), machine facts, fp32 matmul peak."""
    heavy = other_heavy_processes()
    facts = machine_facts()
    return heavy, facts, matmul_peak_gflops(1024 if quick else 2048, 1.0 if quick else 3.0)


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    heavy, facts, peak = machine_before(args.quick)
    work, rows, spec = prepare_work(args)
    folder = spec["model_folder"]

    reused: dict[str, dict] = {}
    ran_afresh = []  # once a side runs again, every later side does (it reads that side's output)

    def side(role: str, side_spec: dict) -> dict:
        earlier = (reused_side(work, role, side_spec, "--resume")
                   if args.resume and not ran_afresh else None)
        if earlier is not None:
            reused[role] = earlier.get("ran", {})
            return earlier
        ran_afresh.append(role)
        return run_side(role, side_spec, work)

    base = side("train-baseline", spec)
    budget = None if args.no_equal_time else base["train_seconds"]
    ours = side("train-nerft", {**spec, "wall_budget_s": budget})
    infer_spec = {**spec, "adapter": ours["adapter"], "baseline_adapter": base["adapter"]}
    inf_base = side("infer-baseline", infer_spec)
    inf_ours = side("infer-nerft", infer_spec)
    eq_hf = side("infer-equal-hf", infer_spec)
    eq_ours = side("infer-equal-nerft", infer_spec)
    heavy_after = other_heavy_processes()
    # A busy machine lowers the peak as much as the runs: keep the better of two measurements.
    peak_after = matmul_peak_gflops(peak["n"], 1.0 if args.quick else 3.0)
    peak = max(peak, peak_after, key=lambda p: p["gflop_per_s"])

    contended = sorted({p["pid"] for p in heavy + heavy_after})
    result = {
        "name": args.name, "mode": "quick" if args.quick else "full",
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": {"source": args.model, "folder": str(folder)},
        "machine": {**facts, "matmul_fp32_peak": peak},
        "contention": {"other_heavy_processes_before": heavy, "other_heavy_processes_after": heavy_after,
                       "contended": bool(contended)},
        "sides_reused": reused,
        "rows": {"train_pool": len(rows["train"]), "samples": args.samples, "val": len(rows["val"]),
                 "test": len(rows["test"]), "tokenise": len(rows["tokenise"]),
                 "max_text_chars": MAX_TEXT_CHARS,
                 "same_training_order": base["order"][:args.samples] == ours["order"][:args.samples]},
        "flops_method": "torch.utils.flop_counter.FlopCounterMode around every training micro-step "
                        "(forward + backward, gradient-checkpoint recompute included), plus CPU SDPA "
                        "counted as its attention matmuls over the full query x key rectangle; "
                        "optimizer step not counted",
        "train": {"baseline": base, "nerft": ours},
        "infer": {"baseline_max_new_tokens": args.max_new_tokens,
                  "baseline": inf_base, "nerft": inf_ours,
                  "equal_work": {"what": "nerft's adapter merged, nerft's prompts, budget "
                                         "nerft.infer.stopping.answer_token_budget per sentence"
                                         + (f" capped at {args.max_new_tokens}" if args.quick else "")
                                         + ", "
                                         "stop tokens nerft.task.chat.stop_token_ids, no constraint",
                                 "model_generate": eq_hf, "nerft": eq_ours,
                                 **equal_work(eq_hf, eq_ours)}},
        "train_time_gap_s": (ours["f1_at_wall_budget"]["train_seconds"] - base["train_seconds"]
                             if ours.get("f1_at_wall_budget") else None),
        "ratios": compare(base, ours, inf_base, inf_ours, args.samples),
        "bench_seconds": time.perf_counter() - started,
    }
    for side in ("baseline", "nerft"):
        result["train"][side]["utilisation_of_matmul_peak"] = ratio(
            result["train"][side]["achieved_gflop_per_s"], peak["gflop_per_s"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    table = markdown_table(result)
    (args.out / f"{args.name}.md").write_text(table, encoding="utf-8")
    print(table)
    return result


if __name__ == "__main__":
    main()
