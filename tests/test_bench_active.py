"""`python -m bench.active`: the selected and the random sentences both come from the pool after
the base's rows, carry their gold labels into training, the random draw is the seed's, and one
small run on the tiny model writes every run's F1 and the comparison into the JSON and table."""

import json
import os
import subprocess
import sys
from pathlib import Path

from nerft.data.example import read_examples

REPO = Path(__file__).resolve().parents[1]


def test_random_draw_is_the_seeds(tmp_path):
    from bench.active import draw_random, split_pool

    rows = [f"row{i}" for i in range(30)]
    base, pool = split_pool(rows, 8, 20)
    assert base == rows[:8] and pool == rows[8:28]
    first, again = draw_random(pool, 5, seed=3), draw_random(pool, 5, seed=3)
    assert first == again and len(set(first)) == 5 and set(first) <= set(pool)
    assert first == sorted(first, key=pool.index)  # pool order, as training sees it
    assert any(draw_random(pool, 5, seed=s) != first for s in range(4, 8))


def test_active_bench_writes_every_run(tmp_path, tiny_model_dir, shared_data):
    from bench.active import draw_random

    base_n, pool_n, add, seed = 8, 20, 5, 7
    out, work = tmp_path / "out", tmp_path / "work"
    done = subprocess.run(
        [sys.executable, "-m", "bench.active", "--base", str(base_n), "--pool", str(pool_n),
         "--add", str(add), "--test", "6", "--seed", str(seed), "--scratch",
         "--model", str(tiny_model_dir), "--set", "eval.val_size=8",
         "--name", "ci", "--out", str(out), "--work", str(work)],
        cwd=REPO, env={**os.environ, "NERFT_DATA": str(shared_data)},
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads((out / "ci.json").read_text(encoding="utf-8"))

    prepared = list(read_examples(work / "data" / "msra" / "train.jsonl"))
    base_ids = {ex.id for ex in prepared[:base_n]}
    pool = prepared[base_n:base_n + pool_n]
    gold = {ex.id: ex for ex in pool}
    selected, randoms = r["sets"]["selected"]["ids"], r["sets"]["random"]["ids"]
    for ids in (selected, randoms):
        assert len(ids) == len(set(ids)) == add
        assert set(ids) <= set(gold) and not set(ids) & base_ids
    assert randoms == [ex.id for ex in draw_random(pool, add, seed)]
    assert r["sets"]["shared"] == len(set(selected) & set(randoms))
    margins = [s["margin"] for s in r["sets"]["selected"]["scores"]]
    assert margins == sorted(margins) and {s["id"] for s in r["sets"]["selected"]["scores"]} == set(selected)
    for name, ids in (("selected", selected), ("random", randoms)):
        trained = list(read_examples(work / "added" / name / "train.jsonl"))
        assert [ex.id for ex in trained] == ids
        # annotation simulated: the gold rows, not the base run's guesses
        assert all(ex.entities == gold[ex.id].entities for ex in trained)
        assert r["sets"][name]["entities"] == sum(len(ex.entities) for ex in trained)

    runs = r["runs"]
    assert list(runs) == ["base", "selected", "random", "scratch-random"]
    for name in ("selected", "random"):
        info = json.loads(Path(runs[name]["run"], "run.json").read_text(encoding="utf-8"))
        assert info["init_from"]["run"] == str(Path(runs["base"]["run"]).resolve())
        assert info["init_from"]["new_rows"] == add and runs[name]["replay_share"] == 0.3
    assert runs["selected"]["steps"] == runs["random"]["steps"] >= 1
    assert runs["scratch-random"]["new_rows"] == base_n + add
    for run in runs.values():
        assert 0.0 <= run["f1"] <= 1.0 and run["train_seconds"] > 0 and run["eval_seconds"] > 0
    assert set(r["comparisons"]) == {"selected vs random", "selected vs base", "random vs base"}
    assert r["selection_seconds"] > 0 and r["machine"]["cpu"]

    table = (out / "ci.md").read_text(encoding="utf-8")
    assert r["command"] in table and "| selected vs random |" in table
    for what in ("base (8 sentences)", "+5 selected", "+5 random", "from scratch on 8 + 5 random"):
        line = next(l for l in table.splitlines() if l.startswith(f"| {what}"))
        assert "not scored" not in line
    assert f"| selected | {add} | {r['sets']['selected']['characters']} |" in table
    assert table in done.stdout
