"""Training-speed levers, one row each, in one bench run (issue 16).

    python -m bench.levers --quick                        # tiny random model, a few minutes (CI)
    python -m bench.levers --model demo --samples 256 --val 100

One invocation prepares the rows once (bench.run.prepare_work), trains the worked example's
recipe once (bench.sides train-baseline: its speed, and its F1 unless --no-baseline-f1) and
nerft's side once per lever, each in its own process, every one over the same first N training
samples in the same order from the same LoRA starting weights (same_lora_init seeds each LoRA
matrix by its layer name, so a side that adapts fewer layers starts from the same values on the
layers it shares). A lever is one `nerft train` override set on top of the bench's nerft
settings; each row reports samples/s, answer tokens/s, GFLOP/s and its share of the fp32 matmul
peak measured in the same run, validation F1 after the same samples (nerft's constrained
decoder, and the reader shared with the baseline), peak RSS while training, and samples/s as a
multiple of the baseline's. A lever whose process fails gets a row with its error; the others
still run. Writes bench/results/<name>.json and .md (rewritten after every side) and prints
the table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from bench.facts import other_heavy_processes
from bench.report import batched_reader_note, write_results
from bench.run import (SideFailed, add_shared_options, data_dir, machine_before, prepare_work, ratio,
                       reused_side, run_side)

# name -> the `nerft train` overrides it sets; besides these, `top-K` (any K) adapts the top K
# blocks only, `combined` is lora_dropout=0 with the top --combined-top-k blocks, and levers
# joined by "+" (e.g. dropout-0+compact) set all their overrides together.
LEVERS: dict[str, list[str]] = {
    "default": [],
    "dropout-0": ["method.lora_dropout=0"],
    "packing-flat": ["training.packing=flat"],
    "prefix-kv": ["training.packing=prefix_kv"],
    "per-example": ["training.packed_attention=per_example"],
    "compact": ["data.answer_format=compact"],
}
FULL_LEVERS = ["default", "dropout-0", "top-16", "top-12", "top-8", "packing-flat", "prefix-kv",
               "per-example", "compact", "combined"]
# --quick: a tiny random model with 4 blocks (each block costs the baseline's checkpointed,
# one-token-at-a-time decoding dearly), so its top-k lever is top-2
QUICK_TINY_LAYERS = 4
QUICK_LEVERS = ["default", "dropout-0", "top-2", "packing-flat", "prefix-kv", "compact", "combined"]


def lever_name(name: str) -> str:
    for part in name.split("+"):
        if not (part in LEVERS or part == "combined" or re.fullmatch(r"top-[1-9][0-9]*", part)):
            raise argparse.ArgumentTypeError(
                f"unknown lever {part!r}: choose from {', '.join(LEVERS)}, combined, top-K "
                "(e.g. top-8), or several joined by + (e.g. dropout-0+compact)")
    return name


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny random model (4 blocks), few steps")
    p.add_argument("--model", default=None, help="'tiny', 'demo' or a model folder "
                   "(default: tiny with --quick, else demo)")
    p.add_argument("--name", default=None, help="results file name (default levers-quick or "
                   "levers-<model>)")
    p.add_argument("--samples", type=int, default=None, help="training samples per side, a "
                   "multiple of 16 (default 16 quick, 256 full)")
    p.add_argument("--val", type=int, default=None, help="validation rows (default 8 / 100)")
    p.add_argument("--levers", nargs="+", type=lever_name, default=None, metavar="NAME",
                   help=f"levers to run, in this order (default: {' '.join(FULL_LEVERS)}; "
                        f"with --quick: {' '.join(QUICK_LEVERS)})")
    p.add_argument("--combined-top-k", type=int, default=None,
                   help="the top_k_layers of the `combined` lever (with lora_dropout=0; "
                        "default 12, 2 with --quick)")
    p.add_argument("--baseline-f1", action=argparse.BooleanOptionalAction, default=None,
                   help="score the baseline's adapter too (its own slow 512-token decoding and "
                        "the shared reader); default on with --quick, off otherwise")
    p.add_argument("--no-common-reader", action="store_true", help="nerft rows: skip the "
                   "shared unconstrained reader (one model.generate per row), constrained F1 only")
    p.add_argument("--every", type=int, default=None, metavar="SAMPLES",
                   help="time to F1: score both sides every SAMPLES training samples (a multiple "
                        "of 16); each lever then trains past --samples, up to --cap, until its "
                        "F1 reaches the target. Turns --baseline-f1 on")
    p.add_argument("--cap", type=int, default=None, metavar="SAMPLES",
                   help="time to F1: the most samples a lever may train (default 2 x --samples)")
    p.add_argument("--target", type=float, default=None,
                   help="time to F1: the validation F1 to reach (default: the baseline's own "
                        "F1 after --samples)")
    p.add_argument("--reuse-baseline", action="store_true",
                   help="take the baseline's side from the last run in --work (its result file), "
                        "when it was run with exactly the settings this run would give it; the "
                        "table says so")
    p.add_argument("--max-new-tokens", type=int, default=None, help="the baseline decoder's "
                   "budget (default 512; 16 with --quick, where a random model never stops)")
    add_shared_options(p)
    args = p.parse_args(argv)
    quick = args.quick
    args.model = args.model or ("tiny" if quick else "demo")
    args.name = args.name or ("levers-quick" if quick else f"levers-{Path(args.model).name}")
    args.samples = args.samples or (16 if quick else 256)
    args.val = args.val or (8 if quick else 100)
    # --quick: a random model never stops, so every answer runs to this budget (the baseline's,
    # and nerft's per-sentence budget capped at it on every reader)
    args.max_new_tokens = args.max_new_tokens or (16 if quick else 512)
    if args.every is not None:
        if args.baseline_f1 is False:
            p.error("--every scores the baseline at every checkpoint: drop --no-baseline-f1")
        if args.every <= 0 or args.every % 16:
            p.error("--every must be a positive multiple of 16")
        args.cap = args.cap or 2 * args.samples
        if args.cap < args.samples or args.cap % 16:
            p.error("--cap must be a multiple of 16, at least --samples")
        args.baseline_f1 = True
    elif args.cap is not None or args.target is not None:
        p.error("--cap and --target belong to the time-to-F1 run: give --every too")
    args.baseline_f1 = quick if args.baseline_f1 is None else args.baseline_f1
    args.test = 0  # no inference here
    args.tokenise_rows = 16  # tokenising is timed by bench.run, not here
    if args.samples % 16:
        p.error("--samples must be a multiple of 16 (one optimizer step is 16 samples on both sides)")
    args.data = args.data or data_dir() / "ccfbdci" / "ccfbdci.jsonl"
    args.levers = list(dict.fromkeys(args.levers or (QUICK_LEVERS if quick else FULL_LEVERS)))
    args.combined_top_k = args.combined_top_k or (2 if quick else 12)
    return args


def overrides_of(name: str, combined_top_k: int) -> list[str]:
    if "+" in name:
        return [o for part in name.split("+") for o in overrides_of(part, combined_top_k)]
    if name == "combined":
        return ["method.lora_dropout=0", f"method.top_k_layers={combined_top_k}"]
    if name.startswith("top-"):
        return [f"method.top_k_layers={name.removeprefix('top-')}"]
    return LEVERS[name]


def shared_lora_start(base: dict, side: dict) -> bool:
    """Every LoRA matrix this side adapts starts as the baseline's matrix of the same name."""
    a, b = base.get("lora_init_by_matrix") or {}, side.get("lora_init_by_matrix") or {}
    return bool(b) and all(k in a and abs(a[k] - v) <= 1e-6 * max(abs(v), 1.0) for k, v in b.items())


def speed_row(side: dict, peak: float, base_samples_per_s: float | None) -> dict:
    """The figures every row has, from a side's result (no wall budget: its whole run is the
    first N samples)."""
    gflops = side.get("achieved_gflop_per_s")
    return {
        "samples": side["samples"], "steps": side["steps"], "train_seconds": side["train_seconds"],
        "samples_per_s": side["samples_per_s"], "answer_tokens": side["answer_tokens"],
        "answer_tokens_per_s": side["answer_tokens_per_s"],
        "tokens_computed_per_sample": side["tokens_computed_per_sample"],
        "executed_gflop_per_sample": side["executed_gflop_per_sample"],
        "achieved_gflop_per_s": gflops, "utilisation_of_matmul_peak": ratio(gflops, peak),
        "trainable_parameters": side["trainable_parameters"],
        "lora_matrices": len(side.get("lora_init_by_matrix") or {}),
        "train_peak_rss_mib": side["memory"].get("train_mib"),
        "samples_per_s_vs_baseline": ratio(side["samples_per_s"], base_samples_per_s),
    }


def nerft_row(name: str, overrides: list[str], side: dict, base: dict | None, peak: float,
              samples: int) -> dict:
    at = side["f1_at_samples"]
    common = at.get("common_reader") or {}
    return {
        "lever": name, "overrides": overrides, "ok": True,
        **speed_row(side, peak, base["samples_per_s"] if base else None),
        "f1": at.get("f1"), "parse_rate": at.get("parse_rate"),
        "f1_common_reader": common.get("f1"), "parse_rate_common_reader": common.get("parse_rate"),
        "f1_samples": at.get("samples"),
        "same_order_as_baseline": base is not None and side["order"][:samples] == base["order"][:samples],
        "same_lora_start_as_baseline": base is not None and shared_lora_start(base, side),
        "order": side["order"][:samples], "curve": curve_of(side),
        "method": side["config"]["method"], "packing": side["config"]["training"]["packing"],
        "answer_format": side["config"]["data"]["answer_format"],
    }


def time_to_target(evaluations: list[dict], target: float) -> dict | None:
    """The first evaluation (by samples) whose F1 reaches `target`: its samples and training
    seconds (evaluation excluded); None when none does."""
    for e in sorted(evaluations, key=lambda e: e["samples"]):
        if e["samples"] > 0 and e.get("f1") is not None and e["f1"] >= target:
            return {"samples": e["samples"], "train_seconds": e["train_seconds"], "f1": e["f1"]}
    return None


def curve_of(side: dict) -> list[dict]:
    """(samples, training seconds, F1) at each evaluation after training began."""
    return [{"samples": e["samples"], "train_seconds": e["train_seconds"], "f1": e.get("f1"),
             "parse_rate": e.get("parse_rate")} for e in side.get("evaluations") or []
            if e["samples"] > 0]


def _num(x, digits=2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _f1(f1, parse) -> str:
    return "-" if f1 is None else f"{f1:.3f} ({parse:.0%})"


def markdown(r: dict) -> str:
    m, peak = r["machine"], r["machine"]["matmul_fp32_peak"]["gflop_per_s"]
    lines = [
        f"# bench.levers: {r['name']} ({r['mode']}, model {r['model']['source']})", "",
        f"{m['date']} · {m['cpu']} · {m['cores']} cores · torch {m['torch']} · transformers "
        f"{m['transformers']} · peft {m['peft']} · fp32 matmul peak {peak:.0f} GFLOP/s · "
        + ("**CONTENDED**: other heavy processes ran" if r["contention"]["contended"]
           else "no other heavy process seen"), "",
        f"Every row: the first {r['rows']['samples']} training samples, "
        + same_rows_claim(r) + ", 16 per optimizer step, from the same LoRA starting weights on "
        f"the layers it adapts; validation F1 on {r['rows']['val']} rows after those samples"
        + (" (a lever may then train on toward the target F1 below: its speeds are over every "
           "step it ran)" if r.get("time_to_f1") else "") + ". "
        f"Command: `{r['command']}`."
        + (" **The baseline's row is reused** from an earlier run in the same work folder with "
           "the same settings (`--reuse-baseline`); its speed was measured then, not in this "
           "run." if r.get("baseline_reused") else ""), "",
        "| lever | settings | samples/s | x baseline | answer tokens/s | GFLOP/s (% of peak) "
        "| trainable params | val F1, own reader (parse) | val F1, shared reader (parse) "
        "| F1 - default | peak RSS training (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    default = next((x for x in r["levers"] if x["lever"] == "default" and x["ok"]), None)
    for row in [r["baseline"], *r["levers"]]:
        settings = "worked example's recipe" if row["lever"] == "baseline" else (
            ", ".join(row["overrides"]) or "bench defaults")
        if not row["ok"]:
            lines.append(f"| {row['lever']} | {settings} | failed: {row['error_line']} "
                         "| | | | | | | | |")
            continue
        g, u = row["achieved_gflop_per_s"], row["utilisation_of_matmul_peak"]
        delta = ("-" if default is None or row["lever"] in ("baseline", "default")
                 or row["f1"] is None else f"{row['f1'] - default['f1']:+.3f}")
        lines.append(
            f"| {row['lever']} | {settings} | {_num(row['samples_per_s'], 3)} "
            f"| {_num(row['samples_per_s_vs_baseline'])} | {_num(row['answer_tokens_per_s'], 1)} "
            f"| {'-' if g is None else f'{g:.1f} ({100 * u:.0f}%)'} | {row['trainable_parameters']:,} "
            f"| {_f1(row['f1'], row['parse_rate'])} "
            f"| {_f1(row['f1_common_reader'], row['parse_rate_common_reader'])} | {delta} "
            f"| {_num(row['train_peak_rss_mib'], 0)} |")
    if r.get("time_to_f1"):
        lines += time_to_f1_lines(r)
    lines += [
        "",
        "Own reader: the baseline decodes as the worked example does (up to "
        f"{r['baseline_max_new_tokens']} tokens, its stop rule); nerft with its constrained "
        "decoder. Shared reader: each side's own prompt, no constraint, greedy `model.generate` "
        "with nerft's per-sentence budget and stop tokens, one parser. "
        + ("" if r["baseline_f1"] else "The baseline's F1 was not measured (--no-baseline-f1). ")
        + batched_reader_note(r["baseline"]),
        "",
    ]
    return "\n".join(lines)


def time_to_f1_lines(r: dict) -> list[str]:
    t = r["time_to_f1"]
    lines = [
        "", f"## Time to the target F1 ({t['target']:.3f}, {t['target_from']})", "",
        f"Each side scored every {t['every']} samples on the same {r['rows']['val']} validation "
        f"rows with its own reader, scoring time excluded from its clock; a lever trains past "
        f"{r['rows']['samples']} samples (to {t['cap']} at most) until it reaches the target. "
        "Time: training seconds until the first score at or above the target.", "",
        "| side | F1 at each score (samples: F1) | reached at | training time | "
        "x faster than the baseline |", "|---|---|---|---|---|",
    ]
    base_time = (r["baseline"].get("time_to_target") or {}).get("train_seconds") if r["baseline"]["ok"] else None
    for row in [r["baseline"], *r["levers"]]:
        if not row["ok"]:
            continue
        scores = ", ".join(f"{e['samples']}: {_num(e['f1'], 3)}" for e in row.get("curve") or [])
        hit = row.get("time_to_target")
        if hit is None:
            last = max((e["samples"] for e in row.get("curve") or []), default=0)
            lines.append(f"| {row['lever']} | {scores} | not within {last} samples | - | - |")
            continue
        faster = "-" if row["lever"] == "baseline" else _num(ratio(base_time, hit["train_seconds"]))
        lines.append(f"| {row['lever']} | {scores} | {hit['samples']} samples "
                     f"| {hit['train_seconds'] / 60:.1f} min | {faster} |")
    return lines


def same_rows_claim(r: dict) -> str:
    """What the table may say about the rows each side trained on: checked, not assumed."""
    others = [x["lever"] for x in r["levers"] if x.get("ok") and not x["same_order_as_baseline"]]
    if not others:
        return "the same rows in the same order as the baseline (checked)"
    return (f"**but {', '.join(others)} trained on other rows or in another order than the "
            "baseline** (their F1 after the same samples is not a same-rows comparison)")


def reused_baseline(work: Path, spec: dict) -> dict:
    """The baseline side's result from an earlier run in `work`, if its spec equals `spec`
    (same rows, model, samples, checkpoints and readers); otherwise a clear error."""
    found = reused_side(work, "train-baseline", spec, "--reuse-baseline")
    if found is None:
        raise SystemExit(f"--reuse-baseline: {work / 'train-baseline.json'} not found (no finished "
                         f"baseline run in {work})")
    return found


def failed_row(name: str, overrides: list[str], error: SideFailed) -> dict:
    text = str(error)
    last = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), text)
    return {"lever": name, "overrides": overrides, "ok": False, "error": text,
            "error_line": last.replace("|", "/")[:200]}


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    heavy, facts, peak = machine_before(args.quick)
    work, rows, spec = prepare_work(args, tiny_layers=QUICK_TINY_LAYERS)
    spec = {**spec, "eval_before_training": False, "common_reader": not args.no_common_reader}
    result = {
        "name": args.name, "mode": "quick" if args.quick else "full",
        "command": "python -m bench.levers " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": {"source": args.model, "folder": spec["model_folder"]},
        "machine": {**facts, "matmul_fp32_peak": peak},
        "contention": {"other_heavy_processes_before": heavy, "contended": bool(heavy)},
        "rows": {"samples": args.samples, "val": len(rows["val"]), "train_pool": len(rows["train"])},
        "baseline_f1": args.baseline_f1, "baseline_max_new_tokens": args.max_new_tokens,
        "baseline": None, "levers": [],
    }
    out = args.out / f"{args.name}.json"

    def save():
        if result["baseline"] is not None:
            write_results(result, out, markdown(result))

    every_steps = args.every // 16 if args.every else None
    base = None
    try:
        base_spec = {**spec, "baseline_f1": args.baseline_f1, "eval_every_steps": every_steps,
                     **({"baseline_reader_batch": args.baseline_reader_batch}
                        if args.baseline_reader_batch > 1 else {})}
        base = reused_baseline(work, base_spec) if args.reuse_baseline else None
        result["baseline_reused"] = base is not None
        if base is None:
            base = run_side("train-baseline", base_spec, work)
        at = base["f1_at_samples"] or {}
        common = at.get("common_reader") or {}
        result["baseline"] = {
            "lever": "baseline", "overrides": [], "ok": True, **speed_row(base, peak["gflop_per_s"], base["samples_per_s"]),
            "f1": at.get("f1"), "parse_rate": at.get("parse_rate"),
            "f1_common_reader": common.get("f1"), "parse_rate_common_reader": common.get("parse_rate"),
            "order": base["order"][:args.samples], "curve": curve_of(base),
            "reader_batch": at.get("reader_batch", 1), "reader_check": at.get("reader_check")}
    except SideFailed as e:  # the nerft rows still run; their ratios stay empty
        result["baseline"] = failed_row("baseline", [], e)
    target = None
    if args.every:
        target = args.target if args.target is not None else result["baseline"].get("f1")
        result["time_to_f1"] = {
            "every": args.every, "cap": args.cap, "target": target,
            "target_from": ("given (--target)" if args.target is not None else
                            f"the worked example's own F1 after {args.samples} samples")}
        if result["baseline"]["ok"] and target is not None:
            result["baseline"]["time_to_target"] = time_to_target(result["baseline"]["curve"], target)
    save()
    for name in args.levers:
        overrides = overrides_of(name, args.combined_top_k)
        lever_spec = {**spec, "nerft_overrides": overrides, "nerft_run_dir": f"nerft-{name}"}
        if every_steps and target is not None:
            lever_spec |= {"eval_every_steps": every_steps, "cap_samples": args.cap,
                           "target_f1": target}
        try:
            side = run_side("train-nerft", lever_spec, work, tag=f"lever-{name}")
            row = nerft_row(name, overrides, side, base, peak["gflop_per_s"], args.samples)
            if target is not None:
                row["time_to_target"] = time_to_target(row["curve"], target)
            result["levers"].append(row)
        except SideFailed as e:
            result["levers"].append(failed_row(name, overrides, e))
        save()

    heavy_after = other_heavy_processes()
    result["contention"] = {"other_heavy_processes_before": heavy,
                            "other_heavy_processes_after": heavy_after,
                            "contended": bool(heavy or heavy_after)}
    result["bench_seconds"] = time.perf_counter() - started
    save()
    table = markdown(result)
    print(table)
    return result


if __name__ == "__main__":
    main()
