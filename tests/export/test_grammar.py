"""The GBNF grammar follows the task's answer format: a compact task's grammar accepts compact
answers and refuses JSON ones, and the other way round (checked with llguidance, the grammar
engine vLLM uses, over the real Qwen tokenizer)."""

import pytest

from nerft.data.example import Span
from nerft.export.grammar import answer_grammar
from nerft.task.prompt import NO_ENTITY, Task

LABELS = ("地点", "人名", '书名"号')
SENTENCE = '张三在北京见到"北京\\人"和北京。'
GOLD = [Span(0, 2, "人名", "张三"), Span(3, 5, "地点", "北京"), Span(7, 13, '书名"号', '"北京\\人"'),
        Span(14, 16, "地点", "北京")]


@pytest.fixture
def accepts(gbnf_accepts):
    return gbnf_accepts


@pytest.mark.parametrize("answer_format, other", [("compact", "json"), ("json", "compact")])
def test_grammar_accepts_its_own_format_and_refuses_the_other(accepts, answer_format, other):
    task, wrong = Task(LABELS, answer_format), Task(LABELS, other)
    answer = task.format_answer(GOLD)
    assert task.parse_answer(answer, SENTENCE).spans == GOLD  # a repeated mention, quotes, \
    for grammar in (answer_grammar(task), answer_grammar(task, SENTENCE)):
        assert accepts(grammar, answer)
        assert accepts(grammar, NO_ENTITY)
        assert not accepts(grammar, wrong.format_answer(GOLD))
        assert not accepts(grammar, answer.replace("人名", "城市"))  # not one of the labels
        assert not accepts(grammar, answer + "\n")  # a line break with no line after it
    invented = task.format_answer([Span(0, 2, "地点", "南京")])  # not in the sentence
    assert accepts(answer_grammar(task), invented)
    assert not accepts(answer_grammar(task, SENTENCE), invented)


def test_grammar_takes_the_task_not_a_bare_label_list():
    with pytest.raises(TypeError, match="Task"):
        answer_grammar(LABELS)
