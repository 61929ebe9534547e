"""The regression gate: paired bootstrap over sentences, and `nerft compare` exit codes."""

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from nerft.cli.compare import compare
from nerft.data.example import Example, Span
from nerft.eval.compare import compare_predictions, gate, paired_bootstrap, sentence_counts


def _examples():
    rows = [("张三在北京工作。", [Span(0, 2, "人名", "张三"), Span(3, 5, "地点", "北京")]),
            ("李四去了上海。", [Span(0, 2, "人名", "李四"), Span(4, 6, "地点", "上海")]),
            ("联合国开会了。", [Span(0, 3, "组织", "联合国")]),
            ("今天下雨。", [])]
    return [Example(f"r{i}", t, e) for i, (t, e) in enumerate(rows * 25)]


def test_a_model_against_itself_has_a_zero_interval_and_passes():
    examples = _examples()
    preds = [ex.entities[:1] for ex in examples]  # finds only the first entity
    result = compare_predictions("toy", examples, preds, preds)
    assert result.f1_a == result.f1_b and result.ci_low == 0 == result.ci_high
    assert gate([result], 1.0, "A", "B").passed


def test_a_real_drop_fails_the_gate_with_an_interval_below_zero():
    examples = _examples()
    good = [list(ex.entities) for ex in examples]
    worse = [ex.entities[:1] for ex in examples]
    result = compare_predictions("toy", examples, good, worse)
    assert result.f1_a == 100 and result.f1_b < 80
    assert result.ci_high < 0 and result.b_better_share == 0
    assert result.per_label["地点"]["f1_b"] == 0 and result.per_label["人名"]["delta"] == 0
    verdict = gate([result], 1.0, "A", "B")
    assert not verdict.passed and "toy" in verdict.reason and "below A" in verdict.reason


def test_a_tiny_change_on_few_sentences_has_an_interval_containing_zero():
    examples = _examples()[:40]
    a = [list(ex.entities) for ex in examples]
    b = [list(ex.entities) for ex in examples]
    b[0] = []  # one sentence differs
    _, low, high = paired_bootstrap(sentence_counts([e.entities for e in examples], a),
                                    sentence_counts([e.entities for e in examples], b))
    assert low < 0 and high >= 0


@pytest.fixture(scope="module")
def cli():
    app = typer.Typer()
    app.command()(compare)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield lambda args: CliRunner().invoke(app, [str(a) for a in args])
    torch.set_num_threads(before)


def test_compare_gate_on_a_trained_run_and_its_untrained_base(cli, learned_run, tmp_path):
    run, data, base = learned_run
    res = cli([base, run, "--data", data, "--out", tmp_path / "up"])
    assert res.exit_code == 0, res.output  # the trained run is far better: it passes
    res = cli([run, base, "--data", data, "--out", tmp_path / "down"])
    assert res.exit_code == 1, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("FAIL:") and "F1 points below" in last
    report = json.loads((tmp_path / "down" / "compare.json").read_text())
    (ds,) = report["data_sets"]
    assert ds["sentences"] == 30 and ds["f1_a"] >= 90 and ds["ci_high"] < 0
    assert not report["passed"] and (tmp_path / "down" / "compare.md").is_file()


def test_compare_a_run_with_itself_passes_with_zero_in_the_interval(cli, learned_run, tmp_path):
    run, data, _ = learned_run
    res = cli([run, run, "--data", data, "--data", data / "val.jsonl", "--out", tmp_path])
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1].startswith("PASS:")
    report = json.loads((tmp_path / "compare.json").read_text())
    assert len(report["data_sets"]) == 2
    for ds in report["data_sets"]:
        assert ds["delta"] == 0 and ds["ci_low"] <= 0 <= ds["ci_high"]


def test_two_runs_of_one_name_are_told_apart_by_their_folders(tmp_path):
    from nerft.eval.workflow import distinct_model_names

    off, on = tmp_path / "g-off" / "runs" / "cluener-640", tmp_path / "g-on" / "runs" / "cluener-640"
    off.mkdir(parents=True), on.mkdir(parents=True)
    assert distinct_model_names(str(off), str(on)) == ("g-off/runs/cluener-640", "g-on/runs/cluener-640")
    assert distinct_model_names(str(off), str(off)) == ("A (cluener-640)", "B (cluener-640)")
    assert distinct_model_names(str(off), "demo") == ("cluener-640", "demo")


def test_compare_rejects_missing_data(tmp_path):
    from nerft.cli import app  # the real command, with its one error handler

    res = CliRunner().invoke(app, ["compare", "a", "b", "--data", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "not found" in res.output
