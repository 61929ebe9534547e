"""`python -m bench.curve`: the sparse corpora it builds are what it says, and one small run
writes a table, a JSON and a plot with the zero-shot point and every trained size."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nerft.data.example import read_examples

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def curve_env(shared_data):
    return {**os.environ, "NERFT_DATA": str(shared_data)}


def test_sparse_corpora_have_mostly_entity_free_sentences(shared_data, tmp_path, monkeypatch):
    from bench.curve import CLUENER_KEEP, CORPORA, prepare_corpus

    monkeypatch.setenv("NERFT_DATA", str(shared_data))
    msra = prepare_corpus(CORPORA["msra-sparse"], tmp_path, max_rows=400)
    for split in ("train", "val", "test"):
        rows = list(read_examples(msra / f"{split}.jsonl"))
        free = sum(1 for ex in rows if not ex.entities) / len(rows)
        assert len(rows) == 400 and 0.68 <= free <= 0.82, (split, free)  # 75% asked, any prefix
    plain = prepare_corpus(CORPORA["msra"], tmp_path, max_rows=400)
    plain_free = sum(1 for ex in read_examples(plain / "train.jsonl") if not ex.entities) / 400
    assert plain_free < 0.55  # the corpus's own mix is far denser

    rare = prepare_corpus(CORPORA["cluener-rare"], tmp_path, max_rows=400)
    rows = list(read_examples(rare / "train.jsonl"))
    labels = {s.label for ex in rows for s in ex.entities}
    stats = json.loads((rare / "stats.json").read_text(encoding="utf-8"))
    assert len(labels) == len(CLUENER_KEEP) == len(stats["labels"])  # the other seven were dropped
    assert sum(1 for ex in rows if not ex.entities) / len(rows) > 0.6


def test_curve_writes_every_point_and_resumes(tmp_path, tiny_model_dir, curve_env):
    def curve(*extra):
        return subprocess.run(
            [sys.executable, "-m", "bench.curve", "--corpus", "cluener-rare", "--test", "6",
             "--model", str(tiny_model_dir), "--name", "ci", "--out", str(tmp_path / "out"),
             "--work", str(tmp_path / "work"), *extra],
            cwd=REPO, env=curve_env, capture_output=True, text=True, timeout=600)

    first = curve("--sizes", "8")
    assert first.returncode == 0, first.stderr[-3000:]
    before = json.loads((tmp_path / "out" / "ci.json").read_text(encoding="utf-8"))
    done = curve("--sizes", "8", "16", "--resume")  # measures 16 only, keeps zero-shot and 8
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads((tmp_path / "out" / "ci.json").read_text(encoding="utf-8"))
    points = r["corpora"]["cluener-rare"]["points"]
    assert sorted(points, key=int) == ["0", "8", "16"]
    old_points = before["corpora"]["cluener-rare"]["points"]
    assert points["0"] == old_points["0"] and points["8"] == old_points["8"]
    assert [c["command"] for c in r["commands"]] == [before["command"], r["command"]]
    for size in ("8", "16"):
        assert points[size]["steps"] >= 1 and points[size]["train_seconds"] > 0
        assert 0.0 <= points[size]["f1"] <= 1.0
        assert Path(points[size]["run"], "best").is_dir()  # the scored adapter is the run's best/
    table = (tmp_path / "out" / "ci.md").read_text(encoding="utf-8")
    assert "| cluener-rare (" in table and "16 sentences" in table
    assert before["command"] in table and r["command"] in table
    assert (tmp_path / "out" / "ci.png").stat().st_size > 1000
    assert f"{points['16']['f1']:.3f}" in done.stdout and "    8 sentences" not in done.stdout

    other_slice = curve("--sizes", "8", "--test", "5", "--resume")
    assert other_slice.returncode != 0 and "test_rows differs" in other_slice.stderr


def test_a_point_whose_clock_is_not_a_speed_figure_says_so_instead_of_minutes():
    from bench.curve import markdown

    point = {"f1": 0.5, "precision": 0.5, "recall": 0.5, "train_seconds": 5196.0}
    results = {"command": "c", "date": "d", "config": "x.yaml", "overrides": [], "test_rows": 10,
               "corpora": {"a": {"published": "", "test_entities": 3, "test_entity_free": 1,
                                 "points": {"0": {"f1": 0.1}, "640": {**point, "time_note": "paused"}}},
                           "b": {"published": "", "test_entities": 3, "test_entity_free": 1,
                                 "points": {"0": {"f1": 0.1}, "640": point}}}}
    table = markdown(results)
    assert "| 0.500 (paused) |" in table and "| 0.500 (86.6 min) |" in table


def test_combined_curve_keeps_where_each_point_came_from_and_what_it_replaced(tmp_path):
    from bench.curve import main

    def point(f1, minutes):
        return {"f1": f1, "precision": f1, "recall": f1, "train_seconds": minutes * 60}

    def results(overrides, points, test_rows=100):
        return {"command": f"python -m bench.curve {' '.join(overrides)}", "date": "2026-11-29",
                "machine": {"cpus": 2 if overrides else 4},
                "config": "configs/demo-cpu.yaml", "overrides": overrides, "test_rows": test_rows,
                "corpora": {"ccfbdci": {"published": "-", "test_entities": 88, "test_entity_free": 64,
                                        "points": points}}}

    out = tmp_path / "out"
    out.mkdir()
    (out / "small.json").write_text(json.dumps(results([], {
        "0": {"f1": 0.202}, "640": point(0.515, 7.9), "2560": point(0.286, 15.8)})), encoding="utf-8")
    (out / "long.json").write_text(json.dumps(results(["training.lr=2e-4"], {
        "0": {"f1": 0.202}, "2560": point(0.719, 28.2)})), encoding="utf-8")
    r = main(["--combine", "small", "long", "--name", "both", "--out", str(out)])
    points = r["corpora"]["ccfbdci"]["points"]
    assert points["640"]["f1"] == 0.515 and points["640"]["from"] == "small"
    assert points["2560"]["f1"] == 0.719 and points["2560"]["overrides"] == ["training.lr=2e-4"]
    assert [src["machine"] for src in r["sources"]] == [{"cpus": 4}, {"cpus": 2}]  # each its own
    assert r["replaced"] == [{"corpus": "ccfbdci", "size": 2560, "f1": 0.286, "from": "small", "by": "long"}]
    table = (out / "both.md").read_text(encoding="utf-8")
    assert "| 0.515 (7.9 min) | 0.719 (28.2 min, training.lr=2e-4) |" in table
    assert "Replaced: ccfbdci at 2560 sentences from small (F1 0.286), by long's point." in table
    assert "python -m bench.curve training.lr=2e-4" in table  # each source's own command
    assert (out / "both.png").stat().st_size > 1000

    (out / "other.json").write_text(json.dumps(results([], {"0": {"f1": 0.2}}, test_rows=50)), encoding="utf-8")
    with pytest.raises(SystemExit, match="other has another test_rows"):
        main(["--combine", "small", "other", "--name", "bad", "--out", str(out)])
