"""Render evaluation results: `report.md`, a self-contained `report.html`, and a terminal table.

Both files are built from one list of sections, so they always say the same thing; the HTML
adds plots as embedded PNGs. One result gives one column per table; several give one column
each, and exactly two add a delta column (second minus first).

Plots are drawn with the Agg canvas (no pyplot, no global backend change). Names the default
font cannot draw (Chinese label names, say) are drawn with a system font that has their
glyphs when one exists (found with `fc-list :lang=zh`, then among the fonts matplotlib knows);
otherwise they are drawn as codes `L1`, `L2`, ... (labels) and `M1`, `M2`, ... (models), and the
figure's caption lists what each code stands for, so no plot ever shows empty boxes.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from rich.table import Table as RichTable
from rich.text import Text

from nerft.eval.errors import ERROR_KINDS, ErrorItem
from nerft.eval.metrics import MODES

if TYPE_CHECKING:
    from nerft.data.example import Span
    from nerft.eval import EvalResult


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Plot:
    png: bytes
    alt: str
    key: list[tuple[str, str]] = field(default_factory=list)  # (code drawn, name it stands for)


@dataclass
class Section:
    title: str
    parts: list = field(default_factory=list)  # str (a paragraph) | Table | Plot


def _num(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _delta(a, b) -> str:
    if a is None or b is None:
        return "-"
    return f"{b - a:+.4f}" if isinstance(a, float) or isinstance(b, float) else f"{b - a:+d}"


def _header(first: str, names: Sequence[str]) -> list[str]:
    return [first, *names] + ([f"Δ ({names[1]} − {names[0]})"] if len(names) == 2 else [])


def _row(name: str, values: Sequence) -> list[str]:
    return [name, *map(_num, values)] + ([_delta(*values)] if len(values) == 2 else [])


def _span(s: "Span") -> str:
    return f"{s.text}/{s.label}[{s.start}:{s.end}]"


def _error(e: ErrorItem) -> str:
    if e.gold is not None and e.pred is not None:
        return f"{e.kind}: {_span(e.gold)} → {_span(e.pred)}"
    return f"{e.kind}: {_span(e.gold or e.pred)}"


# ---------------------------------------------------------------- fonts and plots

@functools.lru_cache(maxsize=None)
def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(path).get_charmap())


@functools.lru_cache(maxsize=None)
def _font_for(chars: frozenset[str]) -> tuple[bool, str | None]:
    """(drawable, font family to use): the default font first, then any font with the glyphs."""
    import matplotlib
    from matplotlib import font_manager

    need = {ord(c) for c in chars}
    if need <= _charmap(font_manager.findfont("DejaVu Sans")):
        return True, None
    paths = []
    fc_list = shutil.which("fc-list")
    if fc_list:
        out = subprocess.run([fc_list, ":lang=zh", "file"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
        paths += sorted({line.split(":")[0].strip() for line in out.splitlines() if line.strip()})
    # matplotlib's own fonts have no CJK glyphs, except "Last Resort", which maps every
    # character to a placeholder box: exactly what this search is meant to avoid.
    bundled = str(Path(matplotlib.get_data_path()).resolve())
    paths += sorted({f.fname for f in font_manager.fontManager.ttflist
                     if not str(Path(f.fname).resolve()).startswith(bundled)})
    for path in paths:
        try:
            covers = need <= _charmap(path)
        except (OSError, RuntimeError):  # a font file FreeType cannot open is simply not a candidate
            continue
        if covers:
            font_manager.fontManager.addfont(path)
            return True, font_manager.FontProperties(fname=path).get_name()
    return False, None


class _Glyphs:
    """How to draw a set of names: as themselves when some font has all their glyphs, else coded."""

    def __init__(self, labels: Sequence[str], models: Sequence[str]):
        self.drawable, family = _font_for(frozenset("".join([*labels, *models])))
        self.rc = {"font.family": "sans-serif", "font.sans-serif": [family, "DejaVu Sans"]} if family else {}
        # One code per name for the whole report, so L2 means the same label in every plot.
        self.codes = {x: f"L{i + 1}" for i, x in enumerate(labels)}
        self.codes.update({x: f"M{i + 1}" for i, x in enumerate(models)})

    def names(self, items: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
        """Names as drawn, and the (code, name) key for those drawn as codes."""
        if self.drawable or all(x.isascii() for x in items):
            return list(items), []
        shown = [self.codes.get(x, x) for x in items]
        return shown, [(c, x) for c, x in zip(shown, items) if c != x]


def _draw(glyphs: _Glyphs, size: tuple[float, float], paint: Callable) -> bytes:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(glyphs.rc):
        fig = Figure(figsize=size)
        FigureCanvasAgg(fig)
        paint(fig.add_subplot())
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _bars(glyphs: _Glyphs, title: str, groups: list[str], series: dict[str, list[float]]) -> Plot:
    shown, key = glyphs.names(groups)
    models, model_key = glyphs.names(list(series))
    width = 0.8 / max(1, len(series))

    def paint(ax):
        for i, (model, values) in enumerate(zip(models, series.values())):
            ax.bar([x + i * width for x in range(len(groups))], values, width, label=model)
        ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(groups))], shown)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("F1")
        ax.set_title(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))

    png = _draw(glyphs, (max(5.0, 0.9 * len(groups) * len(series) + 2), 3.5), paint)
    return Plot(png, title, key + model_key)


def _heatmap(glyphs: _Glyphs, title: str, labels: list[str], counts: list[list[int]]) -> Plot:
    shown, key = glyphs.names(labels)
    top = max((max(r) for r in counts if r), default=0)

    def paint(ax):
        ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(1, top))
        ticks = list(range(len(labels)))
        ax.set_xticks(ticks, shown, rotation=45, ha="right")
        ax.set_yticks(ticks, shown)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(title)
        for r, row in enumerate(counts):
            for c, v in enumerate(row):
                ax.text(c, r, str(v), ha="center", va="center",
                        color="white" if v > top / 2 else "black", fontsize=8)

    side = 1.0 + 0.6 * len(labels)
    return Plot(_draw(glyphs, (side + 1, side), paint), title, key)


# ---------------------------------------------------------------- sections

def _sections(results: dict[str, "EvalResult"], glyphs: _Glyphs) -> list[Section]:
    names = list(results)
    rs = list(results.values())
    summary = Section("Summary", [Table(_header("metric", names), [
        _row("sentences", [r.sentences for r in rs]),
        *(_row(f"{mode} {what}", [getattr(getattr(r.scores[mode], part), attr) for r in rs])
          for mode in MODES
          for what, part, attr in (("precision", "micro", "precision"), ("recall", "micro", "recall"),
                                   ("F1", "micro", "f1"), ("macro F1", "macro", "f1"))),
    ], "micro scores unless marked macro; strict = same span and label, partial = overlapping "
       "span with the same label, type_free = same span with any label")])
    sections = [summary]

    if any(r.answers for r in rs):
        kinds = sorted({k for r in rs if r.answers for k in r.answers.issues})

        def ans(attr):
            return [getattr(r.answers, attr) if r.answers else None for r in rs]

        rows = [_row(a.replace("_", " "), ans(a)) for a in
                ("parse_rate", "hallucination_rate", "answers", "mentions", "hallucinated")]
        rows += [_row(f"issue: {k}", [r.answers.issues.get(k, 0) if r.answers else None for r in rs])
                 for k in kinds]
        sections.append(Section("Answers", [Table(_header("rate", names), rows)]))

    labels = sorted({x for r in rs for x in r.scores["strict"].per_label})
    header = ["label", "support"] + [f"{m} {n}" for n in names for m in ("P", "R", "F1")]
    header += [f"Δ F1 ({names[1]} − {names[0]})"] if len(names) == 2 else []
    rows = []
    for x in labels:
        cells = [r.scores["strict"].per_label.get(x) for r in rs]
        support = next(c.support for c in cells if c is not None)
        row = [x, str(support)]
        for c in cells:
            row += [_num(c.precision), _num(c.recall), _num(c.f1)] if c else ["-"] * 3
        if len(names) == 2:
            row.append(_delta(*(c.f1 if c else None for c in cells)))
        rows.append(row)
    f1s = {n: [r.scores["strict"].per_label[x].f1 if x in r.scores["strict"].per_label else 0.0
               for x in labels] for n, r in results.items()}
    sections.append(Section("Per label (strict)", [
        Table(header, rows), _bars(glyphs, "F1 by label (strict)", labels, f1s)]))

    sections.append(Section("Errors", [Table(_header("kind", names),
                                             [_row(k, [r.errors.counts.get(k, 0) for r in rs])
                                              for k in ERROR_KINDS],
                                             "each gold and each prediction is counted once")]))

    confusion = Section("Confusion (gold rows, predicted columns)")
    shown, model_key = glyphs.names(names)
    for i, (n, r) in enumerate(results.items()):
        cm = r.errors.confusion
        confusion.parts.append(Table(["gold \\ pred", *cm.labels],
                                     [[g, *map(str, row)] for g, row in zip(cm.labels, cm.counts)], n))
        plot = _heatmap(glyphs, f"Confusion: {shown[i]}", cm.labels, cm.counts)
        plot.key += [k for k in model_key if k[0] == shown[i]]
        confusion.parts.append(plot)
    sections.append(confusion)

    buckets = [b.name for b in rs[0].errors.by_length]
    rows = []
    for i, name in enumerate(buckets):
        found = [r.errors.by_length[i] if i < len(r.errors.by_length) else None for r in rs]
        rows.append(_row(f"{name} ({found[0].sentences} sentences)", [b.f1 if b else None for b in found]))
    by_len = {n: [b.f1 for b in r.errors.by_length] for n, r in results.items()}
    sections.append(Section("F1 by sentence length (strict, characters)", [
        Table(_header("length", names), rows),
        _bars(glyphs, "F1 by sentence length (strict)", buckets, by_len)]))

    worst = Section("Worst sentences")
    for n, r in results.items():
        worst.parts.append(Table(["id", "text", "gold", "predicted", "errors"], [
            [w.id, w.text, "; ".join(map(_span, w.gold)) or "-", "; ".join(map(_span, w.pred)) or "-",
             "; ".join(map(_error, w.errors))] for w in r.errors.worst], n))
    sections.append(worst)
    return sections


# ---------------------------------------------------------------- writers

def _md_cell(s: str) -> str:
    # Markdown passes raw HTML through, so text from the data is escaped like HTML too.
    return html.escape(s, quote=False).replace("|", "\\|").replace("\n", " ")


def _markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {_md_cell(title)}", "", "Plots are in report.html next to this file.", ""]
    for s in sections:
        out += [f"## {_md_cell(s.title)}", ""]
        for p in s.parts:
            if isinstance(p, str):
                out += [_md_cell(p), ""]
            elif isinstance(p, Table):
                if p.caption:
                    out += [f"*{_md_cell(p.caption)}*", ""]
                out.append("| " + " | ".join(map(_md_cell, p.header)) + " |")
                out.append("|" + "---|" * len(p.header))
                out += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in p.rows]
                out.append("")
    return "\n".join(out)


_CSS = ("body{font-family:sans-serif;margin:2em;max-width:80em}"
        "table{border-collapse:collapse;margin:1em 0}caption{text-align:left;font-style:italic}"
        "td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}"
        "img{max-width:100%}figcaption{font-size:.9em;color:#444}")


def _html(title: str, sections: list[Section]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="zh"><head><meta charset="utf-8">',
           f"<title>{e(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for s in sections:
        out.append(f"<h2>{e(s.title)}</h2>")
        for p in s.parts:
            if isinstance(p, str):
                out.append(f"<p>{e(p)}</p>")
            elif isinstance(p, Table):
                out.append("<table>" + (f"<caption>{e(p.caption)}</caption>" if p.caption else ""))
                out.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in p.header) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in p.rows]
                out.append("</table>")
            elif isinstance(p, Plot):
                data = base64.b64encode(p.png).decode("ascii")
                key = "; ".join(f"{code} = {name}" for code, name in p.key)
                out.append(f'<figure><img alt="{e(p.alt)}" src="data:image/png;base64,{data}">'
                           + (f"<figcaption>{e(key)}</figcaption>" if key else "") + "</figure>")
    out.append("</body></html>")
    return "\n".join(out)


def render_report(results: dict[str, "EvalResult"], out_dir: Path,
                  title: str = "NER evaluation") -> tuple[Path, Path]:
    """Write `report.md` and `report.html` for one or more named results; returns both paths."""
    if not results:
        raise ValueError("render_report needs at least one named result")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [*results]
    labels = {x for r in results.values() for x in r.errors.confusion.labels} - {"(none)"}
    glyphs = _Glyphs(sorted(labels), names)
    sections = _sections(results, glyphs)
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(_markdown(title, sections) + "\n", encoding="utf-8")
    page.write_text(_html(title, sections) + "\n", encoding="utf-8")
    return md, page


def summary_table(result: "EvalResult") -> RichTable:
    """Scores under each mode, then per label (strict), for the terminal."""
    table = RichTable(title=f"Entity scores, {result.sentences} sentences")
    table.add_column("")
    for col in ("precision", "recall", "F1", "macro F1", "support", "predicted"):
        table.add_column(col, justify="right")
    for mode in MODES:
        s = result.scores[mode]
        table.add_row(mode, _num(s.micro.precision), _num(s.micro.recall), _num(s.micro.f1),
                      _num(s.macro.f1), str(s.micro.support), str(s.micro.predicted))
    table.add_section()
    for label, c in result.scores["strict"].per_label.items():
        table.add_row(Text(f"strict {label}"), _num(c.precision), _num(c.recall), _num(c.f1), "",
                      str(c.support), str(c.predicted))
    notes = ["errors: " + ", ".join(f"{k} {v}" for k, v in result.errors.counts.items())]
    if result.answers is not None:
        notes.append(f"parse rate {result.answers.parse_rate:.4f}, "
                     f"hallucination rate {result.answers.hallucination_rate:.4f}")
    table.caption = Text("\n".join(notes))
    return table
