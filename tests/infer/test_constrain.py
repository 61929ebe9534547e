"""Constrained decoding: every answer parses and names only text of its own sentence."""

import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from nerft.data.example import Span
from nerft.infer.constrain import AnswerConstraint, AnswerLogitsProcessor, token_bytes
from nerft.infer.generate import generate_answers
from nerft.infer.stopping import answer_token_budget
from nerft.task.prompt import NO_ENTITY, Task, format_answer, parse_answer

TASK = Task(("地点", "人名", "地理实体", "组织"))


@pytest.fixture(scope="module")
def ccfbdci_texts(shared_data):
    rows = [json.loads(line)["text"] for line in
            (shared_data / "ccfbdci" / "ccfbdci.jsonl").open(encoding="utf-8")][:2000]
    return rows[::50][:40]  # 40 real sentences of all lengths


def row(tokenizer, text, labels=TASK.labels, budget=None, answer_format="json"):
    task = Task(tuple(labels), answer_format)
    return AnswerConstraint(tokenizer, task, [text], [budget or answer_token_budget(text)]).rows[0]


def write(tokenizer, constraint, answer: str) -> None:
    """Feed the tokenizer's own tokens of `answer`, checking each one is allowed."""
    for token in tokenizer(answer, add_special_tokens=False)["input_ids"]:
        assert token in constraint.allowed().tolist(), (answer, tokenizer.decode([token]), constraint.state)
        constraint.advance(token)


def spelled(tokenizer, constraint) -> set[str]:
    return {tokenizer.decode([t]) for t in constraint.allowed().tolist()}


def eot(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids("<|im_end|>")


def random_answer(tokenizer, constraint, rng) -> list[int]:
    """A random walk through the allowed tokens until EOT: what a random model could write."""
    out = []
    while not out or out[-1] != eot(tokenizer):
        allowed = constraint.allowed().tolist()
        token = rng.choice(allowed)
        out.append(token)
        constraint.advance(token)
    return out


def test_random_tiny_model_answers_always_parse(tiny_model_dir, qwen_tokenizer, ccfbdci_texts):
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
        answers = generate_answers(model, qwen_tokenizer, TASK, ccfbdci_texts, batch_size=16)
    finally:
        torch.set_num_threads(torch_threads)
    parsed = [parse_answer(a, t, TASK.labels) for a, t in zip(answers, ccfbdci_texts)]
    assert all(p.well_formed for p in parsed), [a for a, p in zip(answers, parsed) if not p.well_formed]
    assert [h for p in parsed for h in p.hallucinated] == []
    assert not [i for p in parsed for i in p.issues if i.kind == "unknown_label"]
    # The random model does write entity lines, so the entity path really was exercised.
    assert sum(len(p.spans) for p in parsed) >= 5


def test_random_walks_stay_in_format_and_budget(qwen_tokenizer, ccfbdci_texts):
    rng = random.Random(0)
    texts = ccfbdci_texts[:20] + ['他说"北京\\上海"很近。', "a\tb\nc", "Ｆ１赛车在上海。"]
    for text in texts:
        for budget in (answer_token_budget(text), 40):
            c = row(qwen_tokenizer, text, budget=budget)
            ids = random_answer(qwen_tokenizer, c, rng)
            assert len(ids) <= budget
            answer = qwen_tokenizer.decode(ids, skip_special_tokens=True)
            parsed = parse_answer(answer, text, TASK.labels)
            assert parsed.well_formed and not parsed.hallucinated, (text, answer)
            assert {i.kind for i in parsed.issues} <= {"extra_mention"}, (text, answer)


def test_compact_format_constrained_like_json(tiny_model_dir, qwen_tokenizer, ccfbdci_texts):
    """The compact `"text": "label"` lines: random walks and a random model's answers parse,
    name only text of their sentence and stay within budget; the first byte opens a quote."""
    compact = Task(TASK.labels, "compact")
    rng = random.Random(1)
    texts = ccfbdci_texts[:12] + ['他说"北京\\上海"很近。']
    for text in texts:
        for budget in (answer_token_budget(text), 30):
            c = row(qwen_tokenizer, text, budget=budget, answer_format="compact")
            ids = random_answer(qwen_tokenizer, c, rng)
            answer = qwen_tokenizer.decode(ids, skip_special_tokens=True)
            parsed = compact.parse_answer(answer, text)
            assert len(ids) <= budget and parsed.well_formed and not parsed.hallucinated, (text, answer)
            assert not parsed_as_json_lines(answer), answer
    c = row(qwen_tokenizer, "张三在北京工作。", answer_format="compact")
    assert not any(s.startswith("{") for s in spelled(qwen_tokenizer, c))
    write(qwen_tokenizer, c, '"')
    assert {"北京", "北"} <= spelled(qwen_tokenizer, c) and "上海" not in spelled(qwen_tokenizer, c)
    write(qwen_tokenizer, c, '北京": "地')
    assert "点" in spelled(qwen_tokenizer, c) and "名" not in spelled(qwen_tokenizer, c)

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    answers = generate_answers(model, qwen_tokenizer, compact, ccfbdci_texts[:16], batch_size=16)
    parsed = [compact.parse_answer(a, t) for a, t in zip(answers, ccfbdci_texts[:16])]
    assert all(p.well_formed and not p.hallucinated for p in parsed), answers
    assert sum(len(p.spans) for p in parsed) >= 2  # the entity path was taken


def parsed_as_json_lines(answer: str) -> bool:
    return any(line.startswith("{") for line in answer.splitlines())


def test_quotes_and_backslashes_are_escaped_like_json(qwen_tokenizer):
    text = '他说"北京\\上海"很近。'
    entities = [Span(2, 3, "地点", '"'), Span(3, 5, "地点", "北京"), Span(5, 8, "组织", "\\上海")]
    answer = format_answer(entities)
    c = row(qwen_tokenizer, text, budget=512)  # the default budget would close after two lines
    write(qwen_tokenizer, c, answer)
    assert eot(qwen_tokenizer) in c.allowed().tolist()
    assert parse_answer(answer, text, TASK.labels).spans == entities

    fresh = row(qwen_tokenizer, text)
    write(qwen_tokenizer, fresh, '{"entity_text": "')
    options = spelled(qwen_tokenizer, fresh)
    assert '"' not in options  # an empty entity text
    assert "\\" in options  # the start of \" or \\
    write(qwen_tokenizer, fresh, "\\")
    # Inside an escape only the sentence's own escapes (\" and \\) can follow; no \n.
    assert all(o.startswith(('"', "\\")) for o in spelled(qwen_tokenizer, fresh))


def test_entity_text_must_come_from_the_sentence(qwen_tokenizer):
    c = row(qwen_tokenizer, "张三在北京工作。")
    write(qwen_tokenizer, c, '{"entity_text": "')
    options = spelled(qwen_tokenizer, c)
    assert {"北京", "北", "三", "。"} <= options
    assert not {"上海", "南京", "京北", "\"", "{"} & options
    write(qwen_tokenizer, c, "北京")
    after = spelled(qwen_tokenizer, c)
    assert '"' in after and "在" not in after and "三" not in after
    # Close the text, or go on with 工作。 (some tokens hold only part of a character).
    vocab = token_bytes(qwen_tokenizer)
    spelling = {i: k for k, ids in zip(vocab.keys, vocab.ids) for i in ids}
    rest = "工作。".encode()
    assert all(spelling[t].startswith(b'"') or rest.startswith(spelling[t][:len(rest)])
               for t in c.allowed().tolist())


def test_labels_sharing_prefixes(qwen_tokenizer):
    labels = ("地", "地点", "地理实体", "人名")
    text = "张三在北京工作。"
    for label in labels:
        c = row(qwen_tokenizer, text, labels)
        write(qwen_tokenizer, c, format_answer([Span(3, 5, label, "北京")]))
        assert eot(qwen_tokenizer) in c.allowed().tolist()
    c = row(qwen_tokenizer, text, labels)
    write(qwen_tokenizer, c, '{"entity_text": "北京", "entity_label": "地')
    options = spelled(qwen_tokenizer, c)
    assert '"}' in options or '"' in options  # 地 itself is a label
    assert "点" in options and "名" not in options
    c = row(qwen_tokenizer, text, labels)
    write(qwen_tokenizer, c, '{"entity_text": "北京", "entity_label": "')
    assert "组织" not in spelled(qwen_tokenizer, c) and "组" not in spelled(qwen_tokenizer, c)


def test_no_entity_path_and_line_separator(qwen_tokenizer):
    c = row(qwen_tokenizer, "今天天气很好。")
    first = spelled(qwen_tokenizer, c)
    assert "{\"" in first or "{" in first
    write(qwen_tokenizer, c, NO_ENTITY)
    assert c.allowed().tolist() == [eot(qwen_tokenizer)]

    c = row(qwen_tokenizer, "今天天气很好。")
    write(qwen_tokenizer, c, format_answer([Span(0, 2, "人名", "今天")]))
    after = set(c.allowed().tolist())
    assert eot(qwen_tokenizer) in after
    assert all(qwen_tokenizer.decode([t]).startswith("\n") for t in after - {eot(qwen_tokenizer)})
    write(qwen_tokenizer, c, "\n" + format_answer([Span(0, 2, "人名", "今天")]))  # repeats allowed

    empty = row(qwen_tokenizer, "")
    write(qwen_tokenizer, empty, NO_ENTITY)  # an empty sentence can only have no entity
    assert not any(s.startswith("{") for s in spelled(qwen_tokenizer, row(qwen_tokenizer, "")))


def test_tight_budget_forces_the_answer_closed(qwen_tokenizer):
    text = "菲律宾总统埃斯特拉达２号透过马尼拉当地电台宣布说。"
    c = row(qwen_tokenizer, text, budget=32)
    write(qwen_tokenizer, c, '{"entity_text": "菲律宾总统')
    ids = random_answer(qwen_tokenizer, c, random.Random(1))
    assert c.generated <= 32
    answer = '{"entity_text": "菲律宾总统' + qwen_tokenizer.decode(ids, skip_special_tokens=True)
    assert parse_answer(answer, text, TASK.labels).well_formed


def test_logits_processor_masks_each_row(qwen_tokenizer):
    texts = ["张三在北京。", "今天很好。"]
    c = AnswerConstraint(qwen_tokenizer, TASK, texts, [64, 64])
    processor = AnswerLogitsProcessor(c, prompt_len=3)
    prompt = torch.zeros((2, 3), dtype=torch.long)
    written = qwen_tokenizer('{"entity_text": "', add_special_tokens=False)["input_ids"]
    ids = torch.cat([prompt, torch.tensor([written, written])], 1)
    scores = processor(ids, torch.zeros((2, 151_936)))
    open_tokens = [set(torch.nonzero(r > float("-inf")).flatten().tolist()) for r in scores]
    beijing = qwen_tokenizer.convert_tokens_to_ids(qwen_tokenizer.tokenize("北京"))[0]
    assert beijing in open_tokens[0] and beijing not in open_tokens[1]
    assert max(open_tokens[0] | open_tokens[1]) < len(qwen_tokenizer)  # padding rows stay closed


def test_token_bytes_are_built_once_and_spell_tokens(qwen_tokenizer):
    vocab = token_bytes(qwen_tokenizer)
    assert token_bytes(qwen_tokenizer) is vocab
    lookup = {i: k for k, ids in zip(vocab.keys, vocab.ids) for i in ids}
    for word in ("北京", '"}', "\n", " json", "没有找到"):
        ids = qwen_tokenizer(word, add_special_tokens=False)["input_ids"]
        assert b"".join(lookup[i] for i in ids) == word.encode()
    assert eot(qwen_tokenizer) not in lookup and len(lookup) == 151_643


def test_lookahead_checks_a_draft_without_moving_the_row(qwen_tokenizer):
    c = row(qwen_tokenizer, "张三在北京工作。")
    ids = qwen_tokenizer('{"entity_text": "北京", "entity_label": "地点"}', add_special_tokens=False)["input_ids"]
    before = (c.state, c.generated)
    sets = c.lookahead(ids)
    assert len(sets) == len(ids) and (c.state, c.generated) == before
    write(qwen_tokenizer, c, qwen_tokenizer.decode(ids[:3]))
    assert torch.equal(c.allowed(), sets[3])  # the set a row really has after those tokens
    # A draft that leaves the sentence is cut where it does.
    fresh = row(qwen_tokenizer, "张三在北京工作。")
    bad = qwen_tokenizer('{"entity_text": "上海"', add_special_tokens=False)["input_ids"]
    cut = fresh.lookahead(bad)
    assert 0 < len(cut) < len(bad)
    assert qwen_tokenizer.decode(bad[:len(cut)]).endswith('"entity_text": "')
