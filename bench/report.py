"""The markdown table of a bench/run.py result."""

from __future__ import annotations


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


def markdown_table(r: dict) -> str:
    tb, tn = r["train"]["baseline"], r["train"]["nerft"]
    ib, inn = r["infer"]["baseline"], r["infer"]["nerft"]
    x, m, rows = r["ratios"], r["machine"], r["rows"]
    mb, mn = tb["memory"], tn["memory"]
    wall = tn.get("f1_at_wall_budget")
    peak = m["matmul_fp32_peak"]["gflop_per_s"]

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
        f"{rows['same_training_order']}; validation {rows['val']} rows, test {rows['test']} rows.",
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
        f"| val F1 before training | {_f1({'f1': tn.get('f1_before_training'), 'parse_rate': 0}).split(' (')[0]} | "
        f"same model | |",
        f"| val F1 after {rows['samples']} samples | {_f1(tb['f1_at_samples'])} | {_f1(tn['f1_at_samples'])} | "
        f"{x['f1_at_samples_minus_baseline']:+.3f} |",
        f"| val F1 at the baseline's training time ({_num(tb['train_seconds'], 0)} s) | {_f1(tb['f1_at_samples'])} | "
        + (f"{_f1(wall)} after {wall['samples']} samples | |" if wall else "- | |"),
        f"| inference sentences/s ({ib['sentences']} test rows) | {_num(ib['sentences_per_s'], 3)} (one at a time) | "
        f"{_num(inn['sentences_per_s'], 3)} (continuous batching, guessed tokens) | {_num(x['infer_sentences_per_s'])} |",
        f"| inference answer tokens/s | {_num(ib['answer_tokens_per_s'], 1)} | {_num(inn['answer_tokens_per_s'], 1)} | |",
        f"| inference peak RSS (MiB) | {_num(ib['memory'].get('infer_mib'), 0)} | "
        f"{_num(inn['memory'].get('infer_mib'), 0)} | {_num(x['infer_peak_rss'])} |",
        f"| test F1, same trained adapter | {_f1(ib)} | {_f1(inn)} | |",
        (f"| same, nerft's decoder with constrained decoding off: sentences/s, test F1 | | "
         f"{_num(free['sentences_per_s'], 3)}, {_f1(free)} | "
         f"{_num(x.get('infer_unconstrained_sentences_per_s'))} |"
         if (free := r["infer"].get("nerft_unconstrained")) else None),
        f"| decoder steps after the prompts | {_num(ib.get('generated_tokens'), 0)} (one per token) | "
        + (f"{steps['steps']:,} (guessed {steps['guessed']:,} tokens, kept {steps['kept']:,}) | |"
           if (steps := inn.get("decoder_steps")) else "- | |"),
        "",
        "Validation F1 uses one decoder for both trained models (nerft's `generate_answers`), so "
        "it compares training; inference compares decoders on nerft's trained adapter. FLOPs: "
        f"{r['flops_method']}.",
        "",
    ]
    return "\n".join(line for line in lines if line is not None)
