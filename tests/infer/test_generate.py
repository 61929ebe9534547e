"""Batched generation returns exactly what one-by-one greedy generation returns."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from nerft.infer.constrain import constrained_factory
from nerft.task.chat import render_prompt, shared_prefix_ids
from nerft.infer.generate import AnswerGenerator, DecodeOptions, generate_answers
from nerft.infer.stopping import answer_token_budget
from nerft.infer.running_batch import RunningBatch, lookup
from nerft.task.prompt import Task, parse_answer

TASK = Task(("地点", "人名", "地理实体", "组织"))


@pytest.fixture(scope="module")
def one_thread():
    # A 2-layer model gains nothing from intra-op threads; on a busy 2-core machine they cost 5x.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, qwen_tokenizer, one_thread):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, qwen_tokenizer


@pytest.fixture(scope="module")
def sentences(shared_data):
    rows = [json.loads(line)["text"] for line in
            (shared_data / "ccfbdci" / "ccfbdci.jsonl").open(encoding="utf-8")][:400]
    # Lengths from 6 to 40 characters, so batches pad and budgets differ.
    return [t for t in rows if 6 <= len(t) <= 40][::7][:12]


def reference_ids(model, tokenizer, generator, text):
    """Plain `model.generate` on one unpadded prompt: the behaviour batching must keep."""
    enc = tokenizer(render_prompt(tokenizer, TASK, text), return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=answer_token_budget(text), do_sample=False,
                         eos_token_id=sorted(generator.stop_ids), pad_token_id=generator.pad)
    ids = out[0, enc["input_ids"].shape[1]:].tolist()
    return [t for t in ids if t not in generator.stop_ids]


def test_batched_tokens_equal_one_by_one_generate(tiny, sentences):
    model, tok = tiny
    texts = sentences[:5]
    with_prefix = AnswerGenerator(model, tok, TASK)
    assert len(with_prefix.prefix_ids) > 50  # the system turn really is shared
    batched = with_prefix.generate_ids(texts, batch_size=4, constrained=False)
    plain = AnswerGenerator(model, tok, TASK, prefix_cache=False).generate_ids(
        texts, batch_size=4, constrained=False)
    expected = [reference_ids(model, tok, with_prefix, t) for t in texts]
    assert batched == expected
    assert plain == expected
    # An untrained model never stops by itself: every row runs exactly to its own budget.
    assert [len(ids) for ids in batched] == [answer_token_budget(t) for t in texts]


def test_constrained_batched_equals_one_by_one(tiny, sentences):
    model, tok = tiny
    generator = AnswerGenerator(model, tok, TASK)
    batched = generator.generate_ids(sentences, batch_size=16)
    # 12 sentences through 5 slots: rows join the running batch as others finish.
    refilled = generator.generate_ids(sentences, batch_size=5)
    alone = AnswerGenerator(model, tok, TASK, prefix_cache=False).generate_ids(sentences, batch_size=1)
    assert batched == alone
    assert refilled == alone
    assert all(len(ids) <= answer_token_budget(t) for ids, t in zip(batched, sentences))


def test_cache_stays_bounded_while_rows_come_and_go(tiny, sentences, monkeypatch):
    """Columns that are holes in every running row are dropped when new rows join, so the
    cache is never wider than one row's prompt and answer; every row reports progress once."""
    model, tok = tiny
    generator = AnswerGenerator(model, tok, TASK)
    widths, merge = [], RunningBatch._merge

    def recording_merge(self, cache, mask, p):
        merge(self, cache, mask, p)
        widths.append(self.mask.shape[1])

    monkeypatch.setattr(RunningBatch, "_merge", recording_merge)
    done = []
    generator.generate_ids(sentences, batch_size=2, constrained=False, progress=done.append)
    prompts = [len(tok(render_prompt(tok, TASK, t), add_special_tokens=False)["input_ids"])
               for t in sentences]
    assert len(widths) >= 5  # rows really joined a running batch
    assert max(widths) <= max(prompts) + max(answer_token_budget(t) for t in sentences)
    assert sum(done) == len(sentences)


def test_sliced_head_agrees_with_full_logits(tiny, sentences):
    """Scoring only the allowed tokens (a slice of the output head) gives the same answers as
    masking the full logits."""
    model, tok = tiny
    texts = sentences[:6]
    sliced = AnswerGenerator(model, tok, TASK)
    full = AnswerGenerator(model, tok, TASK)
    full.sliceable_head = False
    answers = sliced.generate(texts, batch_size=4)
    assert full.generate(texts, batch_size=4) == answers
    assert all(parse_answer(a, t, TASK.labels).well_formed for a, t in zip(answers, texts))


def test_constrained_factory_works_with_model_generate(tiny, sentences):
    model, tok = tiny
    texts = sentences[:3]
    side, tok.padding_side = tok.padding_side, "left"
    try:
        enc = tok([render_prompt(tok, TASK, t) for t in texts], return_tensors="pt", padding=True,
                  add_special_tokens=False)
    finally:
        tok.padding_side = side
    width = enc["input_ids"].shape[1]
    out = model.generate(**enc, max_new_tokens=max(answer_token_budget(t) for t in texts),
                         do_sample=False, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tok.pad_token_id,
                         logits_processor=constrained_factory(tok, TASK)(texts, width))
    for row, text in zip(out[:, width:], texts):
        answer = tok.decode(row, skip_special_tokens=True)
        parsed = parse_answer(answer, text, TASK.labels)
        assert parsed.well_formed and not parsed.hallucinated, answer


def test_shared_prefix_is_the_system_turn(qwen_tokenizer):
    prefix = qwen_tokenizer.decode(shared_prefix_ids(qwen_tokenizer, TASK))
    assert prefix.startswith("<|im_start|>system\n") and prefix.endswith("<|im_end|>\n<|im_start|>user\n")
    assert TASK.system_prompt in prefix


def test_training_mode_is_restored_and_empty_input(tiny):
    model, tok = tiny
    model.train()
    try:
        assert generate_answers(model, tok, TASK, [], batch_size=4) == []
        assert len(generate_answers(model, tok, TASK, ["北京"], batch_size=4)) == 1
        assert model.training
    finally:
        model.eval()


def test_lookup_guesses_what_followed_the_last_tokens():
    assert lookup([5, 6, 7, 8, 1, 5, 6], 3) == [7, 8, 1]  # the last two tokens seen before
    assert lookup([5, 6, 7, 9, 6], 2) == [7, 9]  # else the last token alone
    assert lookup([1, 2, 3], 4) == []  # never seen before
    assert lookup([3, 4, 3, 4, 9, 3, 4], 2) == [9, 3]  # the latest occurrence wins


def test_guessed_tokens_keep_the_answers_and_save_steps(tiny, sentences):
    """Feeding guessed tokens and keeping those the model agrees with gives exactly the
    one-token-per-step answers, constrained or not, with rows joining mid-way."""
    model, tok = tiny
    for constrained in (True, False):
        generator = AnswerGenerator(model, tok, TASK)
        guessing = generator.decode(sentences, DecodeOptions(batch_size=5, constrained=constrained))
        plain = generator.decode(sentences, DecodeOptions(batch_size=5, constrained=constrained,
                                                          guess=False))
        assert guessing.ids == plain.ids
        assert plain.stats["guessed"] == 0
        assert guessing.stats["kept"] > 0
        assert guessing.stats["steps"] < plain.stats["steps"]


def test_sliding_window_cache_decodes_in_plain_batches(tiny_model_dir, qwen_tokenizer, sentences,
                                                       one_thread, monkeypatch):
    """A model whose cache is not plain key/value layers (sliding windows) gets no prefix cache,
    no rows joining a running batch and no guesses, and still answers like one by one."""
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.use_sliding_window, config.sliding_window, config.max_window_layers = True, 32, 0
    config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    merges = []
    monkeypatch.setattr(RunningBatch, "_merge", lambda self, *a: merges.append(a))
    generator = AnswerGenerator(model, qwen_tokenizer, TASK)
    decoded = generator.decode(sentences[:8], DecodeOptions(batch_size=3))
    batched = decoded.ids
    assert generator._prefix() is None and merges == [] and decoded.stats["guessed"] == 0
    alone = AnswerGenerator(model, qwen_tokenizer, TASK, prefix_cache=False).generate_ids(
        sentences[:8], batch_size=1)
    assert batched == alone


def test_a_model_that_writes_end_of_text_stops_there(tiny_model_dir, qwen_tokenizer, one_thread):
    """A model whose generation config names only <|im_end|> but which ends with <|endoftext|>
    (as base models do) must stop there, not run on to its budget."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = 151645
    hidden = model.config.hidden_size
    head = torch.nn.Linear(hidden, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[151643] = 1.0  # <|endoftext|> always wins
    model.lm_head = head
    decoded = AnswerGenerator(model, qwen_tokenizer, TASK).decode(
        ["张三在北京。"], DecodeOptions(constrained=False))
    assert decoded.ids == [[]] and decoded.stats["steps"] <= 1


def test_one_generator_serves_concurrent_callers(tiny, sentences):
    """The engine keeps no per-call state: threads calling one generator each get exactly
    the answers they would get alone."""
    from concurrent.futures import ThreadPoolExecutor

    model, tok = tiny
    generator = AnswerGenerator(model, tok, TASK)
    alone = [generator.generate_ids([t], constrained=True) for t in sentences[:6]]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda t: generator.generate_ids([t], constrained=True), sentences[:6]))
    assert together == alone


def test_a_trained_model_ends_its_answers_itself_without_the_constraint(learned_run):
    """A model that has learned its sentences writes <|im_end|> on its own: with constrained
    decoding off, every answer ends at that stop token, well inside the budget, and the answer
    is the training answer (not a loop cut at the budget)."""
    from nerft.task.chat import encode_prompts, stop_token_ids
    from nerft.data.example import read_examples
    from nerft.models.loader import load_model
    from nerft.task.prompt import format_answer

    run, data, _ = learned_run
    model, tokenizer, task = load_model(str(run))
    rows = list(read_examples(data / "test.jsonl"))
    texts = [ex.text for ex in rows]
    decoded = AnswerGenerator(model, tokenizer, task).decode(texts, DecodeOptions(constrained=False))
    stops = sorted(stop_token_ids(tokenizer, model.generation_config))
    prompts = encode_prompts(tokenizer, task, texts)
    with torch.no_grad():
        for text, prompt, ids in zip(texts, prompts, decoded.ids):
            budget = answer_token_budget(text)
            x = torch.tensor([prompt])
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                 max_new_tokens=budget, eos_token_id=stops,
                                 pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
            # The model's own greedy answer ends with a stop token before the budget runs out,
            # and nerft's answer is that answer without its stop token.
            assert out[-1] in stops and len(out) < budget, text
            assert ids == out[:-1], text
    right = sum(a == format_answer(ex.entities) for a, ex in zip(decoded.answers, rows))
    assert right >= 0.9 * len(rows)


def test_decoding_leaves_the_callers_attention_as_it_was(tiny, sentences):
    """Decoding switches a CPU SDPA model to nerft's grouped-heads SDPA only while it decodes:
    the caller's model (a training model under validation, a served model) keeps its own
    attention implementation afterwards."""
    from nerft.infer.decoder import GROUPED_SDPA
    from nerft.infer.predict import predict

    model, tok = tiny
    before = model.config._attn_implementation
    assert before == "sdpa"
    seen = []
    hook = model.model.register_forward_pre_hook(
        lambda module, args: seen.append(model.config._attn_implementation))
    try:
        predict(model, tok, TASK, [("x", t) for t in sentences[:3]], batch_size=2)
    finally:
        hook.remove()
    assert seen and set(seen) == {GROUPED_SDPA}  # the grouped path did run
    assert model.config._attn_implementation == before


def test_importing_the_decoder_registers_nothing():
    """The attention function is registered on first decode, not as a side effect of an import."""
    import subprocess
    import sys

    code = ("import nerft.infer.generate, nerft.infer.predict\n"
            "from transformers import AttentionInterface\n"
            "print('nerft_sdpa' in dict(AttentionInterface()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
