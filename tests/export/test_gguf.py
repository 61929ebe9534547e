"""`nerft export --gguf`: llama.cpp's converter (pinned wheel, never installed), reloaded with
transformers to the same tokens and answers; the Modelfile prompts like nerft; the GBNF grammar
accepts nerft's answers and nothing else (checked with llguidance, the grammar engine vLLM uses)."""

import json
import re

import pytest
import torch
import typer
from typer.testing import CliRunner

from nerft.export.grammar import answer_grammar
from nerft.export.gguf import modelfile
from nerft.cli.export import export
from nerft.task.prompt import Task, format_answer
from nerft.data.example import Span
from nerft.task.chat import render_prompt

TASK = Task(("地点", "人名", "地理实体", "组织"))


@pytest.fixture(scope="module")
def gguf_export(tiny_lora_run, tmp_path_factory):
    app = typer.Typer()
    app.command()(export)
    out = tmp_path_factory.mktemp("gguf") / "q8"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(app, [str(tiny_lora_run), "--out", str(out), "--gguf", "q8_0"])
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_gguf_reloads_with_the_same_tokens_and_answers(gguf_export):
    # The export itself reloads the GGUF with transformers (gguf_file=), compares token ids of
    # every checked prompt, logits and answers with the run; a second reload here would only
    # repeat it (parsing the 151k-token vocabulary from GGUF takes ~30 s per load on 2 cores).
    out, output = gguf_export
    assert re.search(r"GGUF check passed: max \|Δlogit\| [0-9.e+-]+ \(allowed [0-9.e+-]+, q8_0\); "
                     r"answers identical on 3/3", output), output
    assert (out / "model-q8_0.gguf").read_bytes()[:4] == b"GGUF"
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "model-q8_0.gguf" in card and "same token ids" in card


def test_modelfile_renders_the_training_prompt(gguf_export):
    out, _ = gguf_export
    text = (out / "Modelfile").read_text(encoding="utf-8")
    assert text.startswith("FROM ./model-q8_0.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|endoftext|>"' in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    system = text.split('SYSTEM """', 1)[1].split('"""', 1)[0]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    sentence = "张三在北京大学读书。"
    # Ollama fills {{ .System }} and {{ .Prompt }}: the result must be nerft's own prompt.
    rendered = template.replace("{{ .System }}", system).replace("{{ .Prompt }}", sentence)
    assert rendered == render_prompt(tokenizer, TASK, sentence)
    assert modelfile("m.gguf", TASK, ["<|im_end|>"]).count("PARAMETER stop") == 1


@pytest.fixture
def matcher_for(gbnf_accepts):
    return gbnf_accepts


def test_grammar_accepts_answers_and_rejects_the_rest(gguf_export, matcher_for):
    out, _ = gguf_export
    generic = (out / "answer.gbnf").read_text(encoding="utf-8")
    sentence = '他说"北京\\上海"很近，李白也去了。'
    gold = [Span(sentence.index(t), sentence.index(t) + 2, label, t)
            for t, label in (("北京", "地点"), ("上海", "地点"), ("李白", "人名"))]
    answer = format_answer(gold)
    specific = answer_grammar(TASK, sentence)
    for grammar in (generic, specific):
        assert matcher_for(grammar, answer)
        assert matcher_for(grammar, "没有找到任何实体")
        assert not matcher_for(grammar, answer.replace("地点", "城市"))  # unknown label
        assert not matcher_for(grammar, answer.replace(", ", ","))  # not the trained format
    quoted = format_answer([Span(2, 10, "组织", sentence[2:10])])  # a JSON-escaped quote and backslash
    assert '\\"' in quoted and "\\\\" in quoted
    assert matcher_for(generic, quoted) and matcher_for(specific, quoted)
    invented = format_answer([Span(0, 2, "地点", "南京")])  # not in the sentence
    assert matcher_for(generic, invented) and not matcher_for(specific, invented)
    assert json.loads(quoted)["entity_text"] in sentence
