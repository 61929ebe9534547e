"""`--backend vllm` on CPU, against a stand-in `vllm` package that mirrors vLLM 0.19.1's classes
(tests/serve/vllm_contract): the engine arguments, LoRA requests and sampling parameters nerft
builds, the grammar each request carries (checked token by token with llguidance, as vLLM's
guidance backend does), and answers parsed by the task as the hf backend's are. No GPU here:
the real engine is run by bench/gpu-serve.sh."""

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest
import requests
import torch

from nerft.export.grammar import answer_grammar
from nerft.infer.stopping import answer_token_budget
from nerft.serve.app import ServeSettings, serve_runs
from nerft.serve.engine import ServeError, load_runs
from nerft.task.chat import encode_prompts, end_of_turn_id

CONTRACT = Path(__file__).with_name("vllm_contract")
TEXTS = ["张三在北京大学读书。", "😀 李四昨天去了上海。", "我们明天去南京看长江。",
         "联合国秘书长访问了日内瓦。"]


@pytest.fixture
def fake_vllm(monkeypatch):
    """The stand-in `vllm` importable, only inside the test (nerft's backend imports vLLM
    inside its functions, so it finds whichever is importable)."""
    monkeypatch.syspath_prepend(str(CONTRACT))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    from vllm.v1.engine.async_llm import AsyncLLM

    AsyncLLM.started = []
    yield AsyncLLM
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]  # no later test may find the stand-in as if vLLM were installed


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hf_runs(tiny_lora_run, second_lora_run):
    """Both runs through the hf backend (one base model, two adapters): the reference answers."""
    runs = load_runs([str(tiny_lora_run), str(second_lora_run)], max_batch=4)
    return {run.name: run.decode(TEXTS) for run in runs}


def test_check_vllm_says_what_is_missing_in_one_line(fake_vllm, monkeypatch):
    import vllm

    from nerft.serve.vllm_backend import VllmUnavailable, check_vllm

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(VllmUnavailable, match="needs a CUDA GPU and none is visible here"):
        check_vllm()
    monkeypatch.setattr(vllm, "__version__", "0.11.2")
    with pytest.raises(VllmUnavailable, match=r"needs vllm>=0.19.1 .* found 0.11.2"):
        check_vllm()


def test_engine_arguments_and_lora_requests(fake_vllm, tiny_lora_run, second_lora_run,
                                            tiny_model_dir):
    from vllm import AsyncEngineArgs

    from nerft.serve.vllm_backend import plan_vllm

    one = plan_vllm([str(tiny_lora_run)])
    assert (one.model, one.tokenizer, one.dtype) == (str(tiny_model_dir), str(tiny_model_dir),
                                                     "float32")
    assert one.max_lora_rank == 8  # the adapter's r=4, rounded up to a rank vLLM accepts
    args = AsyncEngineArgs(**one.engine_kwargs(gpu_memory=0.5, max_text_chars=100))
    assert args.enable_lora and args.max_loras == 1 and args.max_lora_rank == 8
    assert args.structured_outputs_config.backend == "guidance"
    assert args.generation_config == "vllm" and args.gpu_memory_utilization == 0.5
    assert args.max_model_len >= 4 * 100 + answer_token_budget("x" * 100)
    # never past the model's own positions (the tiny model has 4,096)
    assert one.engine_kwargs(max_text_chars=2000)["max_model_len"] == 4096
    # nerft serve --max-batch is vLLM's max_num_seqs; without it vLLM keeps its own default
    assert AsyncEngineArgs(**one.engine_kwargs(max_num_seqs=4)).max_num_seqs == 4
    assert "max_num_seqs" not in one.engine_kwargs()
    (request,) = one.lora_requests().values()
    assert (request.lora_name, request.lora_int_id, request.lora_path) == (
        tiny_lora_run.name, 1, str(tiny_lora_run / "best"))

    two = plan_vllm([str(tiny_lora_run), str(second_lora_run)])
    assert two.model == one.model  # one base model, loaded once
    args = AsyncEngineArgs(**two.engine_kwargs())
    assert args.max_loras == 2
    assert [(r.lora_name, r.lora_int_id) for r in two.lora_requests().values()] == [
        (tiny_lora_run.name, 1), (second_lora_run.name, 2)]


def _dora_copy(run, tmp_path):
    copy = tmp_path / "dora-run"
    shutil.copytree(run, copy)
    config_file = copy / "best" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["use_dora"] = True
    config_file.write_text(json.dumps(config))
    return copy


def test_dora_and_full_runs_load_as_plain_weights(fake_vllm, tiny_lora_run, tmp_path,
                                                  monkeypatch):
    from nerft.serve.vllm_backend import plan_vllm

    dora = _dora_copy(tiny_lora_run, tmp_path)
    merged = []
    plan = plan_vllm([str(dora)], merge=lambda ref: merged.append(ref) or tmp_path / "merged")
    assert merged == [str(dora)] and plan.model == str(tmp_path / "merged")
    assert plan.max_lora_rank is None and plan.runs[0].adapter is None
    assert "enable_lora" not in plan.engine_kwargs()
    with pytest.raises(ServeError, match="is a DoRA adapter, which vLLM cannot load as a LoRA"):
        plan_vllm([str(tiny_lora_run), str(dora)])

    full = tmp_path / "full-run"
    shutil.copytree(tiny_lora_run, full)
    shutil.rmtree(full / "best")
    (full / "best").mkdir()
    (full / "best" / "config.json").write_text("{}")
    plan = plan_vllm([str(full)])
    assert plan.model == str(full / "best") and plan.max_lora_rank is None


def test_merged_weights_are_written_once_to_the_cache(tiny_lora_run, tmp_path, monkeypatch):
    from nerft.serve.vllm_backend import merged_weights

    monkeypatch.setenv("NERFT_CACHE", str(tmp_path / "cache"))
    folder = merged_weights(str(tiny_lora_run))
    assert (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file()
    assert not (folder / "adapter_config.json").exists()
    assert merged_weights(str(tiny_lora_run)) == folder


@pytest.fixture
def scripted(fake_vllm, qwen_tokenizer, hf_runs, tiny_lora_run, second_lora_run):
    """The stand-in engine answers each (run, prompt) with the hf backend's answer tokens and
    the end-of-turn token, checking every token against the request's grammar as llguidance
    (vLLM's guidance backend) compiles it."""
    import llguidance
    import llguidance.hf

    from nerft.models.loader import load_model

    tokenizer = load_model(str(tiny_lora_run)).tokenizer
    eot = end_of_turn_id(tokenizer)
    answers = {}
    prompts = encode_prompts(tokenizer, _task(tiny_lora_run), TEXTS)  # both runs' task
    for name, decoded in hf_runs.items():
        for d, prompt in zip(decoded, prompts):
            answers[(name, tuple(prompt))] = [*d.ids, eot]
    lltok = llguidance.hf.from_tokenizer(tokenizer)

    def grammar_check(grammar):
        matcher = llguidance.LLMatcher(lltok, llguidance.grammar_from("grammar", grammar))
        assert not matcher.is_error(), matcher.get_error()
        return lambda token: (matcher.is_accepting() if token == eot
                              else matcher.try_consume_tokens([token]) == 1)

    fake_vllm.script = lambda prompt, lora: iter(answers[(lora.lora_name, tuple(prompt))])
    fake_vllm.grammar_check = grammar_check
    return fake_vllm, tokenizer, answers


def _task(run):
    from nerft.models.loader import describe

    return describe(str(run)).task


def test_answers_equal_the_hf_backend_and_requests_carry_the_grammar(
        scripted, hf_runs, tiny_lora_run, second_lora_run):
    from nerft.serve.vllm_backend import start_vllm

    engine_class, tokenizer, _ = scripted
    runs, hooks = start_vllm([str(tiny_lora_run), str(second_lora_run)])
    (engine,) = engine_class.started
    task = _task(tiny_lora_run)

    async def both():
        return [await run.decode(TEXTS) for run in runs]

    for run, decoded in zip(runs, asyncio.run(both())):
        expected = hf_runs[run.name]
        assert [d.answer for d in decoded] == [d.answer for d in expected]
        assert [d.entities for d in decoded] == [d.entities for d in expected]
        assert [d.prompt_tokens for d in decoded] == [d.prompt_tokens for d in expected]
    assert len(engine.requests) == 2 * len(TEXTS) and not engine.aborted
    for (prompt, params, _, lora), text in zip(engine.requests, TEXTS * 2):
        assert prompt["prompt_token_ids"] == encode_prompts(tokenizer, task, [text])[0]
        assert params.temperature == 0.0 and params.max_tokens == answer_token_budget(text)
        assert end_of_turn_id(tokenizer) in params.stop_token_ids
        assert params.structured_outputs.grammar == answer_grammar(task, text)
    assert [lora.lora_name for *_, lora in engine.requests] == \
        [tiny_lora_run.name] * len(TEXTS) + [second_lora_run.name] * len(TEXTS)
    assert hooks["alive"]()
    hooks["shutdown"]()
    assert engine.stopped


def test_a_repeating_line_is_cut_and_the_request_aborted(scripted, tiny_lora_run):
    from nerft.serve.vllm_backend import start_vllm

    engine_class, tokenizer, _ = scripted
    line = '{"entity_text": "张三", "entity_label": "人名"}\n'
    looping = tokenizer(line * 50, add_special_tokens=False)["input_ids"]
    engine_class.script = lambda prompt, lora: iter(looping)
    (run,), _ = start_vllm([str(tiny_lora_run)])
    (decoded,) = asyncio.run(run.decode([TEXTS[0]]))
    # 张三 occurs once in the sentence: its line may occur once; the answer ends before the
    # second (keeping the first line's newline, as the hf decoder's cut does).
    assert decoded.answer == line
    assert [(e.text, e.label) for e in decoded.entities] == [("张三", "人名")]
    (engine,) = engine_class.started
    assert len(engine.aborted) == 1  # the engine stops working on it


def test_routes_serve_the_async_engine(scripted, hf_runs, tiny_lora_run, second_lora_run):
    from test_service_limits import Running

    from nerft.serve.vllm_backend import start_vllm

    runs, hooks = start_vllm([str(tiny_lora_run), str(second_lora_run)])
    app = serve_runs(runs, ServeSettings(model_name=runs[0].name), **hooks)
    server = Running(None, app=app)
    try:
        for name in (None, second_lora_run.name):
            body = requests.post(server.url + "/v1/ner", json={"texts": TEXTS, "run": name},
                                 timeout=60).json()
            expected = hf_runs[name or tiny_lora_run.name]
            assert [r["entities"] for r in body["results"]] == \
                [[e.to_dict() for e in d.entities] for d in expected]
        chat = requests.post(server.url + "/v1/chat/completions", json={
            "model": second_lora_run.name, "messages": [{"role": "user", "content": TEXTS[1]}]},
            timeout=60).json()
        assert chat["choices"][0]["message"]["content"] == hf_runs[second_lora_run.name][1].answer
        assert requests.get(server.url + "/health", timeout=10).json()["status"] == "ok"
        metrics = requests.get(server.url + "/metrics", timeout=10).text
        assert f'nerft_run_sentences_total{{run="{second_lora_run.name}"}} 5.0' in metrics
    finally:
        server.stop()
    (engine,) = scripted[0].started
    assert engine.stopped  # the app's shutdown stops the engine


def test_a_tagging_head_is_refused_in_one_line(tagger_lora_run, tiny_lora_run):
    """vLLM only generates: a tagger run, alone or beside a generating one, is refused before
    anything loads (merged, it would have been served as a chat model)."""
    from nerft.serve.vllm_backend import plan_vllm

    with pytest.raises(ServeError, match="tagging head"):
        plan_vllm([str(tagger_lora_run)])
    with pytest.raises(ServeError, match="different heads|tagging head"):
        plan_vllm([str(tiny_lora_run), str(tagger_lora_run)])
