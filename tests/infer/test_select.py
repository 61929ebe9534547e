"""`nerft select`: sentences the model is unsure of come first, written with its guesses."""

import json

import torch
import typer
from typer.testing import CliRunner

from nerft.data.example import read_examples
from nerft.models.loader import load_model
from nerft.infer.select import rank_uncertain
from nerft.cli.select import select

# Hand-written sentences the learned run never saw: it has to guess.
UNSEEN = ["小王明天要去哈尔滨出差。", "那家公司在苏州开了工厂。", "老李和老张在公园下棋。",
          "他们乘船到了舟山群岛。", "记者昨天采访了市长。"]


def test_unseen_sentences_rank_above_the_ones_it_knows_by_heart(learned_run, tmp_path):
    run, data, _ = learned_run
    known = [(ex.id, ex.text) for ex in read_examples(data / "train.jsonl")][:10]
    unseen = [(f"new:{i}", t) for i, t in enumerate(UNSEEN)]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tokenizer, task = load_model(str(run))
        scored = rank_uncertain(model, tokenizer, task, known + unseen)
    finally:
        torch.set_num_threads(before)
    assert len(scored) == 15 and all(s.decisions > 0 for s in scored)
    assert [s.margin for s in scored] == sorted(s.margin for s in scored)
    rank = {s.id: i for i, s in enumerate(scored)}
    # The memorised sentences are answered with confidence, the new ones are close calls.
    assert scored[0].id.startswith("new:")
    assert sum(rank[i] for i, _ in unseen) / 5 < sum(rank[i] for i, _ in known) / 10
    assert min(s.margin for s in scored if not s.id.startswith("new:")) > 0

    inp = tmp_path / "unlabeled.txt"
    inp.write_text("\n".join(t for _, t in known + unseen) + "\n", encoding="utf-8")
    app = typer.Typer()
    app.command()(select)
    out = tmp_path / "to_annotate.jsonl"
    res = CliRunner().invoke(app, [str(run), "--input", str(inp), "--top", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 4 and [r["selection"]["rank"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["text"] == scored[0].text
    ups = [r["selection"]["uncertainty"] for r in rows]
    assert ups == sorted(ups, reverse=True)
    pre = list(read_examples(out))  # canonical: readable as training data once corrected
    for ex in pre:
        assert all(ex.text[e.start:e.end] == e.text for e in ex.entities)
