import base64
import re

from rich.console import Console

from nerft.data.example import Example, Span
from nerft.eval import evaluate, render_report, summary_table
from nerft.eval import report as report_module
from nerft.task.prompt import parse_answer

TEXT = "小明在<script>alert(1)</script>北京工作"


def _results():
    gold = [
        Example("t:1", TEXT, [Span(0, 2, "PER", "小明"), Span(3, 11, "ORG", "<script>"),
                              Span(28, 30, "LOC", "北京")]),
        Example("t:2", "上海很大", [Span(0, 2, "LOC", "上海")]),
    ]
    assert TEXT[28:30] == "北京"
    answers = [parse_answer('{"entity_text":"小明","entity_label":"PER"}\n'
                            '{"entity_text":"<script>","entity_label":"ORG"}', TEXT),
               parse_answer("上海", "上海很大")]
    zero_shot = evaluate(gold, [a.spans for a in answers], answers)
    fine_tuned = evaluate(gold, [[Span(0, 2, "PER", "小明"), Span(3, 11, "ORG", "<script>"),
                                  Span(28, 30, "LOC", "北京")], [Span(0, 2, "LOC", "上海")]])
    return {"zero-shot": zero_shot, "fine-tuned": fine_tuned}


def test_comparison_report_is_self_contained_and_escaped(tmp_path):
    md_path, html_path = render_report(_results(), tmp_path / "out")
    assert (md_path.name, html_path.name) == ("report.md", "report.html")
    page = html_path.read_text(encoding="utf-8")
    md = md_path.read_text(encoding="utf-8")

    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 4  # F1 by label, two confusion heatmaps, F1 by length
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    for external in ("http://", "https://", "href=", "<link", "url(", "@import"):
        assert external not in page
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>" not in md and "&lt;script&gt;" in md

    # Both models side by side, and the delta (second minus first).
    assert "| metric | zero-shot | fine-tuned | Δ (fine-tuned − zero-shot) |" in md
    assert "| strict F1 | 0.6667 | 1.0000 | +0.3333 |" in md
    assert "| missed | 2 | 0 | -2 |" in md
    assert "| parse rate | 0.5000 | - | - |" in md
    assert "<th>Δ (fine-tuned − zero-shot)</th>" in page


def test_single_result_has_no_delta(tmp_path):
    results = _results()
    md_path, _ = render_report({"fine-tuned": results["fine-tuned"]}, tmp_path)
    md = md_path.read_text(encoding="utf-8")
    assert "| metric | fine-tuned |" in md and "Δ" not in md


def test_names_no_font_can_draw_become_codes_with_a_key(tmp_path, monkeypatch):
    results = _results()
    # ASCII names are drawn as they are: no key under any plot.
    _, html_path = render_report(results, tmp_path / "ascii")
    assert "<figcaption>" not in html_path.read_text(encoding="utf-8")

    monkeypatch.setattr(report_module, "_font_for", lambda chars: (False, None))
    renamed = {"零样本": results["zero-shot"], "微调": results["fine-tuned"]}
    _, html_path = render_report(renamed, tmp_path / "coded")
    page = html_path.read_text(encoding="utf-8")
    assert "<figcaption>M1 = 零样本; M2 = 微调</figcaption>" in page
    assert "<figcaption>M1 = 零样本</figcaption>" in page


def test_summary_table_shows_every_mode():
    console = Console(record=True, width=140)
    console.print(summary_table(_results()["zero-shot"]))
    out = console.export_text()
    for needle in ("strict", "partial", "type_free", "strict LOC", "0.6667", "parse rate 0.5000"):
        assert needle in out
