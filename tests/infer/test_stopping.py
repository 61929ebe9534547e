"""The answer budget never cuts a gold answer; a looping answer still ends early."""

import subprocess
import sys

import pytest

from nerft.data.example import Span, read_examples
from nerft.infer.stopping import RepeatedLineGuard, answer_token_budget
from nerft.task.prompt import Task, format_answer

JSON_TASK = Task(("地点", "人名"))

CORPORA = {
    "ccfbdci": ["ccfbdci/ccfbdci.jsonl"],
    "cluener": ["CLUENER2020/cluener_public/train.json", "CLUENER2020/cluener_public/dev.json"],
    "msra": ["MSRA/msra_train_bio", "MSRA/msra_test_bio"],
    "peoples_daily": ["PeoplesDaily/example.dev", "PeoplesDaily/example.test"],
}


@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_no_gold_answer_of_a_real_corpus_exceeds_its_budget(corpus, shared_data, qwen_tokenizer, tmp_path):
    out = tmp_path / corpus
    files = [str(shared_data / f) for f in CORPORA[corpus]]
    done = subprocess.run([sys.executable, "-m", "nerft", "data", "prepare", *files, "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [ex for split in ("train", "val", "test") for ex in read_examples(out / f"{split}.jsonl")]
    assert len(rows) > 1000 and sum(len(ex.entities) for ex in rows) > 1000
    answers = qwen_tokenizer([format_answer(ex.entities) for ex in rows],
                             add_special_tokens=False)["input_ids"]
    over = [(ex.text[:30], len(ids) + 1, answer_token_budget(ex.text))
            for ex, ids in zip(rows, answers) if len(ids) + 1 > answer_token_budget(ex.text)]
    assert over == []


def feed(guard, tokenizer, answer):
    """Feed an answer token by token; the kept answer text when the guard cuts, else None."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    for n in range(1, len(ids) + 1):
        cut = guard.cut_at(ids[:n])
        if cut is not None:
            return tokenizer.decode(ids[:cut])
    return None


def test_a_repeated_entity_line_ends_the_answer_after_its_last_allowed_copy(qwen_tokenizer):
    sentence = "张三在北京工作。"
    line = format_answer([Span(0, 2, "人名", "张三")])
    looping = "\n".join([line] * 6) + "\n"
    kept = feed(RepeatedLineGuard(qwen_tokenizer, sentence, JSON_TASK), qwen_tokenizer, looping)
    assert kept == line + "\n"


def test_mentions_that_occur_several_times_are_kept(qwen_tokenizer):
    sentence = "北京人爱北京，北京。"
    gold = format_answer([Span(0, 2, "地点", "北京"), Span(4, 6, "地点", "北京"), Span(7, 9, "地点", "北京")])
    assert feed(RepeatedLineGuard(qwen_tokenizer, sentence, JSON_TASK), qwen_tokenizer, gold + "\n") is None
    # A fourth copy is more mentions than the sentence holds.
    fourth = gold + "\n" + gold.splitlines()[0] + "\n"
    assert feed(RepeatedLineGuard(qwen_tokenizer, sentence, JSON_TASK), qwen_tokenizer, fourth) == gold + "\n"


@pytest.mark.parametrize("sentence, mentions", [
    ("北京和北京", [(0, 2, "北京"), (3, 5, "北京")]),
    ("张三在北京见到张三，北京下雨。", [(0, 2, "张三"), (3, 5, "北京"), (7, 9, "张三"), (10, 12, "北京")]),
])
def test_compact_answer_with_a_repeated_mention_keeps_every_mention_like_json(qwen_tokenizer, sentence,
                                                                              mentions):
    # The stop rule reads lines in the task's own format: a compact line that names a text the
    # sentence holds twice may occur twice, exactly as the JSON line does.
    gold = [Span(s, e, "人名" if t == "张三" else "地点", t) for s, e, t in mentions]
    found = {}
    for answer_format in ("json", "compact"):
        task = Task(("地点", "人名"), answer_format)
        answer = task.format_answer(gold)
        guard = RepeatedLineGuard(qwen_tokenizer, sentence, task)
        assert feed(guard, qwen_tokenizer, answer + "\n") is None, answer_format
        found[answer_format] = task.parse_answer(answer, sentence).spans
        # one copy more than the sentence holds is still cut, after the last allowed copy
        looping = answer + "\n" + answer.splitlines()[0] + "\n"
        guard = RepeatedLineGuard(qwen_tokenizer, sentence, task)
        assert feed(guard, qwen_tokenizer, looping) == answer + "\n", answer_format
    assert found["compact"] == found["json"] == sorted(gold)


def test_a_looping_compact_answer_is_cut_like_a_json_one(qwen_tokenizer):
    sentence = "张三在北京工作。"
    task = Task(("地点", "人名"), "compact")
    line = task.format_answer([Span(0, 2, "人名", "张三")])
    kept = feed(RepeatedLineGuard(qwen_tokenizer, sentence, task), qwen_tokenizer,
                "\n".join([line] * 6) + "\n")
    assert kept == line + "\n"
