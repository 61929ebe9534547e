"""Per-split statistics and the terminal summary of `nerft data prepare`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nerft.data.example import Example
from nerft.data.prepared import OUTPUT_FILES, REJECTED_FILE


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an already sorted list (0 for an empty list)."""
    if not sorted_values:
        return 0
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil without floats drifting
    return sorted_values[int(rank) - 1]


def split_stats(examples: list[Example], labels: list[str]) -> dict:
    lengths = sorted(len(ex.text) for ex in examples)
    per_label = Counter(s.label for ex in examples for s in ex.entities)
    return {
        "rows": len(examples),
        "rows_without_entities": sum(1 for ex in examples if not ex.entities),
        "entities": {label: per_label.get(label, 0) for label in labels},
        "text_length": {
            "min": lengths[0] if lengths else 0,
            "p50": percentile(lengths, 50),
            "p90": percentile(lengths, 90),
            "p99": percentile(lengths, 99),
            "max": lengths[-1] if lengths else 0,
        },
    }


def print_summary(stats: dict, out_dir: str, console: Console | None = None) -> None:
    console = console or Console()
    inputs = Table(title="Input files", title_justify="left")
    for col in ("file", "format", "split", "read", "kept", "rejected", "duplicates", "repaired"):
        inputs.add_column(col, justify="left" if col in ("file", "format", "split") else "right")
    for f in stats["inputs"]:
        inputs.add_row(escape(Path(f["file"]).name), f["format"], f["declared_split"] or "-", *(
            f"{f[k]:,}" for k in ("read", "kept", "rejected", "duplicates", "repaired")))
    t = stats["totals"]
    inputs.add_row("total", "", "", *(f"{t[k]:,}" for k in ("read", "kept", "rejected", "duplicates",
                                                             "repaired")), style="bold")
    console.print(inputs)

    reasons = {**{f"dropped: {k}": v for k, v in stats["dropped_by_reason"].items()},
               **{f"removed: {k}": v for k, v in stats["duplicates_by_kind"].items()},
               **{f"repaired: {k}": v for k, v in stats["repaired_by_reason"].items()}}
    if reasons:
        why = Table(title=f"Rejected, removed and repaired rows (details in {REJECTED_FILE})",
                    title_justify="left")
        why.add_column("reason")
        why.add_column("rows", justify="right")
        for k, v in sorted(reasons.items()):
            why.add_row(k, f"{v:,}")
        console.print(why)

    # Which name each corpus label became, and where that name came from.
    several_formats = len({r["format"] for r in stats.get("label_map", [])}) > 1
    label_table = Table(title="Labels (name the model sees; - dropped)",
                        title_justify="left")
    for col in ("corpus label", *(("format",) if several_formats else ()), "name", "from",
                "entities", "removed"):
        label_table.add_column(col, justify="right" if col in ("entities", "removed") else "left")
    for r in stats.get("label_map", []):
        label_table.add_row(escape(r["corpus_label"]), *((r["format"],) if several_formats else ()),
                            escape(r["name"]), escape(r["source"]), f"{r['entities_kept']:,}",
                            f"{r['entities_dropped']:,}")
    if stats.get("label_map"):
        console.print(label_table)

    # Labels as rows, splits as columns: stays readable in 80 columns with ten labels.
    names = list(stats["splits"])
    splits = Table(title=escape(f"Splits ({stats['split_policy']})"), title_justify="left")
    splits.add_column("")
    for name in names:
        splits.add_column(name, justify="right")
    per = stats["splits"]
    splits.add_row("rows", *(f"{per[n]['rows']:,}" for n in names), style="bold")
    splits.add_row("rows without entities", *(f"{per[n]['rows_without_entities']:,}" for n in names))
    for label in stats["labels"]:
        splits.add_row(escape(f"entities: {label}"), *(f"{per[n]['entities'][label]:,}" for n in names))
    for q in ("p50", "p90", "p99", "max"):
        splits.add_row(f"text length {q}", *(str(per[n]["text_length"][q]) for n in names))
    console.print(splits)
    console.print(f"Wrote {', '.join(OUTPUT_FILES)} to {escape(out_dir)}", highlight=False)
