"""A tagger run (method.head tagger) through the commands a user runs on any run: `nerft predict`,
`nerft select`'s ranking, `nerft serve` (a real server) and `nerft export` (adapter and merged
reload and answer the same; GGUF refused in one line)."""

import json

import pytest
import requests
import torch
from typer.testing import CliRunner

from nerft.data.example import read_examples
from nerft.infer.predict import decoder_for, predict_rows
from nerft.infer.tagger import TokenTagger
from nerft.models.loader import load_model

# Hand-written, with 北京 twice: the spans must keep the offsets the tagger found.
EXTRA = "张三从北京来，李四也从北京来。"


@pytest.fixture(scope="module")
def rows(tagger_run):
    _, data = tagger_run
    examples = list(read_examples(data / "test.jsonl"))[:6]
    return examples, [(ex.id, ex.text) for ex in examples] + [("extra", EXTRA)]


@pytest.fixture(scope="module")
def expected(tagger_run, rows):
    run, _ = tagger_run
    decoder = decoder_for(*load_model(str(run)))
    assert isinstance(decoder, TokenTagger)
    return predict_rows(decoder, rows[1])


def test_predict_rows_gives_the_taggers_spans_and_answers_in_the_task_format(tagger_run, rows, expected):
    run, _ = tagger_run
    examples, _ = rows
    task = load_model(str(run)).task
    # the tiny tagger knows these (training) rows: most come back exactly, offsets included
    exact = sum(d.entities == ex.entities for d, ex in zip(expected, examples))
    assert exact >= len(examples) - 2 and any(ex.entities for ex in examples)
    for d in expected:
        assert d.answer == task.format_answer(d.entities) and d.ids == []
        assert all(d.text[s.start:s.end] == s.text for s in d.entities)


def test_nerft_predict_cli_on_a_tagger_run(tagger_run, rows, expected, tmp_path):
    from nerft.cli import app

    run, _ = tagger_run
    sentences = tmp_path / "in.txt"
    sentences.write_text("\n".join(t for _, t in rows[1]) + "\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["predict", str(run), "--input", str(sentences),
                                      "--output", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.output
    got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [g["entities"] for g in got] == [[e.to_dict() for e in d.entities] for d in expected]
    refused = CliRunner().invoke(app, ["predict", str(run), EXTRA, "--labels", "人名"])
    assert refused.exit_code == 2 and "a tagger's labels are its head's outputs" in refused.output


def test_select_ranks_by_the_taggers_smallest_tag_margin(tagger_run, rows):
    from nerft.infer.select import rank_uncertain

    run, _ = tagger_run
    model, tokenizer, task = load_model(str(run))
    ranked = rank_uncertain(model, tokenizer, task, rows[1])
    assert sorted(s.id for s in ranked) == sorted(i for i, _ in rows[1])
    margins = [s.margin for s in ranked]
    assert margins == sorted(margins) and all(0 <= m < float("inf") for m in margins)
    assert all(s.decisions == len(s.text) for s in ranked)  # one decision per character here


def test_nerft_serve_answers_a_tagger_run_like_predict(tagger_run, expected, tmp_path):
    from bench.live import Server

    run, _ = tagger_run
    server = Server(run, ["--max-wait-ms", "50"], tmp_path / "serve.log", {"OMP_NUM_THREADS": "1"})
    try:
        texts = [d.text for d in expected]
        body = requests.post(server.url + "/v1/ner", json={"texts": texts}, timeout=120).json()
        assert [r["entities"] for r in body["results"]] == [[e.to_dict() for e in d.entities]
                                                            for d in expected]
    finally:
        server.stop()


def test_adapter_and_merged_exports_of_a_lora_tagger_answer_like_the_run(tmp_path, tagger_lora_run):
    from nerft.export import ExportError
    from nerft.export.workflow import export_run

    run = tagger_lora_run
    texts = ["张三在北京大学读书。", EXTRA, "联合国秘书长访问了日内瓦。"]
    want = decoder_for(*load_model(str(run))).tag_logits(texts)[1]
    adapter = export_run(run, tmp_path / "adapter")
    merged = export_run(run, tmp_path / "merged", merge=True, dtype="float32")
    assert merged.parity.identical_answers == merged.parity.sentences
    for out in (adapter.out, merged.out):
        record = json.loads((out / "task.json").read_text())
        assert record["head"] == "tagger" and record["decoding"]["tags"][0] == "O"
        decoder = decoder_for(*load_model(str(out)))
        assert isinstance(decoder, TokenTagger)
        got = decoder.tag_logits(texts)[1]
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(want, got))
    assert "nothing is generated" in (merged.out / "README.md").read_text()
    with pytest.raises(ExportError, match="tagging head .* llama.cpp cannot run"):
        export_run(run, tmp_path / "gguf", merge=True, gguf="q8_0")
    assert not (tmp_path / "gguf").exists()
