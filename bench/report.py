"""Markdown tables of bench results, and writing a result as JSON beside its table."""

from __future__ import annotations

import json
from pathlib import Path


def _num(x, digits=2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}" if abs(x) < 1e5 else f"{x:,.0f}"
    return f"{x:,}"


def _f1(q: dict | None) -> str:
    if not q or q.get("f1") is None:
        return "-"
    return f"{q['f1']:.3f} (parse {q['parse_rate']:.0%})"


def _common(q: dict | None) -> str:
    return _f1((q or {}).get("common_reader"))


def reused_line(reused: dict) -> str | None:
    """Which sides an earlier invocation measured (`--resume`), each with when and at what load."""
    if not reused:
        return None
    said = [f"{tag} ({ran.get('started', 'date not recorded')}, {_num(ran.get('seconds'), 0)} s, "
            f"load after {', '.join(f'{x:.1f}' for x in ran.get('load_average_after', [])) or '-'})"
            for tag, ran in reused.items()]
    return ("**Sides measured by an earlier invocation** in the same work folder with the same "
            f"settings (`--resume`), reused here: {'; '.join(said)}. The machine facts above are "
            "this invocation's.\n")


def markdown_table(r: dict) -> str:
    tb, tn = r["train"]["baseline"], r["train"]["nerft"]
    ib, inn = r["infer"]["baseline"], r["infer"]["nerft"]
    eq = r["infer"]["equal_work"]
    eh, en = eq["model_generate"], eq["nerft"]
    x, m, rows = r["ratios"], r["machine"], r["rows"]
    mb, mn = tb["memory"], tn["memory"]
    wall = tn.get("f1_at_wall_budget")
    peak = m["matmul_fp32_peak"]["gflop_per_s"]
    gap = r.get("train_time_gap_s")

    def util(side):
        g = side.get("achieved_gflop_per_s")
        return "-" if g is None else f"{g:.1f} ({100 * g / peak:.0f}% of peak)"

    lines = [
        f"# bench: {r['name']} ({r['mode']}, model {r['model']['source']})",
        "",
        f"{m['date']} · {m['cpu']} · {m['cores']} cores · torch {m['torch']} · transformers "
        f"{m['transformers']} · peft {m['peft']} · fp32 matmul peak {peak:.0f} GFLOP/s · "
        f"{'**CONTENDED**: other heavy processes ran' if r['contention']['contended'] else 'no other heavy process seen'}",
        "",
        f"Training: {rows['samples']} samples per side, same rows in the same order: "
        f"{rows['same_training_order']}; same LoRA starting weights: "
        f"{tb.get('lora_init_checksum') is not None and tb.get('lora_init_checksum') == tn.get('lora_init_checksum')}; "
        f"validation {rows['val']} rows, test {rows['test']} rows.",
        "",
        reused_line(r.get("sides_reused") or {}),
        "## Training",
        "",
        "| | baseline (worked example) | nerft | nerft / baseline |",
        "|---|---|---|---|",
        f"| train samples/s (first {rows['samples']} samples) | {_num(tb['samples_per_s'], 3)} | "
        f"{_num(tn['samples_per_s_at_samples'], 3)} (whole run: {_num(tn['samples_per_s'], 3)}) | "
        f"{_num(x['train_samples_per_s'])} |",
        f"| train answer tokens/s | {_num(tb['answer_tokens_per_s'], 1)} | {_num(tn['answer_tokens_per_s'], 1)} | "
        f"{_num(x['train_answer_tokens_per_s'])} |",
        f"| tokens computed per sample | {_num(tb['tokens_computed_per_sample'], 1)} | "
        f"{_num(tn['tokens_computed_per_sample'], 1)} | {_num(x['tokens_computed_per_sample'])} |",
        f"| executed GFLOP per sample | {_num(tb['executed_gflop_per_sample'], 1)} | "
        f"{_num(tn['executed_gflop_per_sample'], 1)} | {_num(x['executed_gflop_per_sample'])} |",
        f"| achieved GFLOP/s | {util(tb)} | {util(tn)} | |",
        f"| peak RSS while training (MiB) | {_num(mb.get('train_mib'), 0)} | {_num(mn.get('train_mib'), 0)} | "
        f"{_num(x['train_peak_rss'])} |",
        f"| tokenise {tb['tokenise_rows']:,} rows (s) | {_num(tb['tokenise_seconds'])} | "
        f"{_num(tn['tokenise_seconds'])} | {_num(x['tokenise_seconds'])} |",
        f"| val F1 before training (nerft's decoder) | same model | "
        f"{_num(tn.get('f1_before_training'), 3)} | |",
        f"| val F1 after {rows['samples']} samples, each side's own reader | {_f1(tb['f1_at_samples'])} | "
        f"{_f1(tn['f1_at_samples'])} | {x['f1_at_samples_own_reader_minus_baseline']:+.3f} |",
        f"| val F1 after {rows['samples']} samples, the same unconstrained reader | "
        f"{_common(tb['f1_at_samples'])} | {_common(tn['f1_at_samples'])} | "
        f"{x['f1_at_samples_common_reader_minus_baseline']:+.3f} |",
        f"| val F1 at equal training time: baseline {_num(tb['train_seconds'], 1)} s | "
        f"{_f1(tb['f1_at_samples'])}; same reader {_common(tb['f1_at_samples'])} | "
        + (f"{_f1(wall)}; same reader {_common(wall)} after {wall['samples']} samples, "
           f"{_num(wall['train_seconds'], 1)} s (gap {_num(gap, 1)} s) | |" if wall else "- | |"),
        "",
        "Own reader: the baseline decodes as the worked example does (up to "
        f"{r['infer']['baseline_max_new_tokens']} tokens, its stop rule, objects back to back); "
        "nerft uses its constrained decoder. Same reader: each side's own prompt, no constraint, "
        "greedy `model.generate` with nerft's per-sentence budget and stop tokens, one parser. "
        + batched_reader_note(tb["f1_at_samples"]),
        "",
        "## Inference (a): as each user gets it",
        "",
        "| | baseline: worked example (own adapter, unmerged PEFT, "
        f"{r['infer']['baseline_max_new_tokens']} tokens, one at a time) | nerft predict (own adapter merged, "
        "constrained, batched) | nerft / baseline |",
        "|---|---|---|---|",
        f"| sentences/s ({ib['sentences']} test rows) | {_num(ib['sentences_per_s'], 3)} | "
        f"{_num(inn['sentences_per_s'], 3)} | {_num(x['user_infer_sentences_per_s'])} |",
        f"| answer tokens, answer tokens/s | {_num(ib['answer_tokens'])}, {_num(ib['answer_tokens_per_s'], 1)} | "
        f"{_num(inn['answer_tokens'])}, {_num(inn['answer_tokens_per_s'], 1)} | |",
        f"| peak RSS (MiB) | {_num(ib['memory'].get('infer_mib'), 0)} | "
        f"{_num(inn['memory'].get('infer_mib'), 0)} | {_num(x['user_infer_peak_rss'])} |",
        f"| test F1 (each side's own trained adapter) | {_f1(ib)} | {_f1(inn)} | |",
        "",
        "These rows compare different work: different adapters, budgets, stop rules and formats.",
        "",
        "## Inference (b): equal work",
        "",
        f"{eq['what']}.",
        "",
        "| | `model.generate`, one sentence at a time | nerft's batched decoder | nerft / generate |",
        "|---|---|---|---|",
        f"| sentences/s ({eh['sentences']} test rows) | {_num(eh['sentences_per_s'], 3)} | "
        f"{_num(en['sentences_per_s'], 3)} | {_num(eq['sentences_per_s'])} |",
        f"| answer tokens/s | {_num(eh['answer_tokens_per_s'], 1)} | {_num(en['answer_tokens_per_s'], 1)} | "
        f"{_num(eq['answer_tokens_per_s'])} |",
        f"| generated tokens/s (answer ids, stop token not counted) | {_num(eh['generated_tokens_per_s'], 1)} | "
        f"{_num(en['generated_tokens_per_s'], 1)} | {_num(eq['generated_tokens_per_s'])} |",
        f"| generated tokens; answer tokens (answers re-encoded) | {_num(eh['generated_tokens'])}; "
        f"{_num(eh['answer_tokens'])} | {_num(en['generated_tokens'])}; {_num(en['answer_tokens'])} | |",
        f"| identical answers | {eq['identical_answers']} of {eq['sentences']} | | |",
        f"| test F1 | {_f1(eh)} | {_f1(en)} | |",
        "| decoder steps after the prompts | one per token | "
        + (f"{steps['steps']:,} (guessed {steps['guessed']:,} tokens, kept {steps['kept']:,}) | |"
           if (steps := en.get("decoder_steps")) else "- | |"),
        "",
        f"FLOPs: {r['flops_method']}.",
        "",
    ]
    return "\n".join(line for line in lines if line is not None)


def write_results(results: dict, out_json: Path, markdown_text: str) -> None:
    """A bench's JSON and its markdown table, side by side (rewritten as a long run goes on)."""
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(results, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    out_json.with_suffix(".md").write_text(markdown_text, encoding="utf-8")


def batched_reader_note(base: dict) -> str:
    """What --baseline-reader-batch changed, and how far its answers agree with the example's."""
    if (base.get("reader_batch") or 1) <= 1:
        return ""
    check = base.get("reader_check") or {}
    return (f"The baseline's own reader decoded {base['reader_batch']} sentences per generate call "
            "(left-padded; its prompt, greedy, stop ids and budget; `--baseline-reader-batch`, "
            "scoring off the clock); on the final adapter, one sentence at a time gave the same "
            f"answer for {check.get('identical', '-')} of its first {check.get('rows', '-')} rows. ")
