"""`nerft export --gguf`: llama.cpp's converter (pinned wheel, never installed), reloaded with
transformers to the same tokens and answers; the Modelfile prompts like nerft; the GBNF grammar
accepts nerft's answers and nothing else (checked with llguidance, the grammar engine vLLM uses).
`--gguf-adapter`: the base model's GGUF with the LoRA in a GGUF of its own, reloaded as llama.cpp
applies it. (k-quants and the llama.cpp binaries: test_llama_cpp.py.)"""

import json
import re

import pytest
import torch
import typer
from typer.testing import CliRunner

from nerft.export.grammar import answer_grammar
from nerft.export.gguf import apply_adapter_gguf, check_adapter_convertible, modelfile
from nerft.export import ExportError
from nerft.infer.stopping import answer_token_budget
from nerft.cli.export import export
from nerft.task.prompt import Task, format_answer
from nerft.data.example import Span
from nerft.task.chat import render_prompt

TASK = Task(("地点", "人名", "地理实体", "组织"))


def run_export(args):
    app = typer.Typer()
    app.command()(export)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gguf_export(tiny_lora_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "q8"
    result = run_export([tiny_lora_run, "--out", out, "--gguf", "q8_0"])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def adapter_gguf_export(tiny_lora_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "lora"
    result = run_export([tiny_lora_run, "--out", out, "--gguf", "f16", "--gguf-adapter"])
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
    assert modelfile("m.gguf", TASK, ["<|im_end|>"], 100, "").count("PARAMETER stop") == 1


def test_modelfile_budget_is_nerfts_answer_budget(gguf_export):
    # Not a fixed 512: the budget nerft decodes with, for the longest sentence of the run's data
    # (the tiny run's data is its three validation sentences).
    from tiny import TINY_RUN_VAL

    out, _ = gguf_export
    text = (out / "Modelfile").read_text(encoding="utf-8")
    longest = max(TINY_RUN_VAL, key=len)
    assert f"PARAMETER num_predict {answer_token_budget(longest)}\n" in text
    assert f"({len(longest)} characters)" in text and "48 + 6 * its length" in text


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


def test_adapter_gguf_reloads_with_the_same_answers(adapter_gguf_export, tiny_lora_run):
    # The export reloads base-f16.gguf with transformers, applies adapter-f16.gguf as llama.cpp
    # would (alpha and rank from the GGUF) and compares logits and answers with the run.
    from gguf import GGUFReader

    out, output = adapter_gguf_export
    assert re.search(r"GGUF check passed: max \|Δlogit\| [0-9.e+-]+ \(allowed [0-9.e+-]+, f16\); "
                     r"answers identical on 3/3", output), output
    files = {p.name for p in out.iterdir()}
    assert {"base-f16.gguf", "adapter-f16.gguf", "adapter", "Modelfile", "answer.gbnf"} <= files
    assert not any(name.startswith("model") for name in files)  # nothing merged
    reader = GGUFReader(out / "adapter-f16.gguf")
    assert reader.get_field("general.type").contents() == "adapter"
    assert reader.get_field("adapter.lora.alpha").contents() == 8.0
    # q_proj and v_proj of both blocks, A and B each: the adapter and nothing else.
    assert sorted(t.name for t in reader.tensors) == sorted(
        f"blk.{i}.attn_{m}.weight.lora_{ab}" for i in (0, 1) for m in "qv" for ab in "ab")
    text = (out / "Modelfile").read_text(encoding="utf-8")
    assert text.startswith("FROM ./base-f16.gguf\nADAPTER ./adapter-f16.gguf\n")
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "--lora adapter-f16.gguf" in card and "convert_lora_to_gguf.py" in card


def test_adapter_gguf_applies_like_the_run_and_the_bare_base_does_not(adapter_gguf_export, tiny_lora_run,
                                                                      tiny_model_dir):
    # What makes the reload check able to fail: the base alone is far from the run, the base with
    # the GGUF adapter is within f16 rounding of it.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _ = adapter_gguf_export
    ids = torch.tensor([[9707, 3837, 101, 102, 103, 104, 105]])
    base = lambda: AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        run = PeftModel.from_pretrained(base(), tiny_lora_run / "best").eval()(ids).logits
        bare = base()(ids).logits
        from_gguf = apply_adapter_gguf(base(), out / "adapter-f16.gguf")(ids).logits
    assert (from_gguf - run).abs().max() < 1e-3 < (bare - run).abs().max()


def test_adapter_gguf_refuses_what_llama_cpp_would_apply_differently(tiny_lora_run, tmp_path):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_lora_run / "best", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    check_adapter_convertible(adapter)  # the plain LoRA passes
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ExportError, match="DoRA"):
        check_adapter_convertible(adapter)
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    with pytest.raises(ExportError, match="rsLoRA"):
        check_adapter_convertible(adapter)


def test_gguf_adapter_option_errors(tiny_lora_run, tmp_path):
    result = run_export([tiny_lora_run, "--out", tmp_path / "a", "--gguf-adapter"])
    assert result.exit_code != 0 and "--gguf-adapter goes with --gguf TYPE" in str(result.exception)
    result = run_export([tiny_lora_run, "--out", tmp_path / "b", "--gguf", "q4"])
    assert "choose one of f16, q8_0, q3_k_m, q4_k_s, q4_k_m" in str(result.exception)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_every_gguf_type_has_a_tolerance_and_is_offered_in_the_help():
    from nerft.export.gguf import GGUF_TYPES
    from nerft.export.parity import TOLERANCE

    assert set(GGUF_TYPES) <= set(TOLERANCE)  # none falls back to another type's allowance
    app = typer.Typer()
    app.command()(export)
    help_text = " ".join(CliRunner().invoke(app, ["--help"], terminal_width=200).output.split())
    for name in GGUF_TYPES:
        assert name in help_text
