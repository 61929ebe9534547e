from nerft.data.example import Example, Span
from nerft.task.prompt import Task, format_answer
from nerft.task.chat import render_prompt
from nerft.train.encode import IGNORE, encode_examples

TASK = Task(("地点", "人名", "地理实体", "组织"))
EXAMPLES = [
    Example("a", "菲律宾总统埃斯特拉达在马尼拉说。",
            [Span(0, 3, "地理实体", "菲律宾"), Span(5, 10, "人名", "埃斯特拉达"), Span(11, 14, "地理实体", "马尼拉")]),
    Example("b", "今天天气很好。", []),
]


def test_only_the_answer_and_end_of_turn_are_supervised(qwen_tokenizer):
    tok = qwen_tokenizer
    encoded, report = encode_examples(tok, TASK, EXAMPLES, max_length=384)
    assert report.kept == 2 and report.too_long == []
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end == 151645
    for ex, enc in zip(EXAMPLES, encoded):
        prompt = render_prompt(tok, TASK, ex.text)
        # Masked positions are exactly the prompt as the model's own template renders it.
        assert tok.decode(enc.input_ids[:enc.answer_start]) == prompt
        assert all(l == IGNORE for l in enc.labels[:enc.answer_start])
        assert enc.labels[enc.answer_start:] == enc.input_ids[enc.answer_start:]
        # The last supervised token is the end-of-turn token, and nothing follows it.
        assert enc.input_ids[-1] == im_end and enc.labels[-1] == im_end
        answer = tok.decode(enc.input_ids[enc.answer_start:-1])
        assert answer == format_answer(ex.entities)
        # Same ids as the template's own tokenisation of the whole conversation.
        full = tok.apply_chat_template(TASK.messages(ex.text, format_answer(ex.entities)), tokenize=False)
        assert tok(full, add_special_tokens=False)["input_ids"][:len(enc)] == enc.input_ids


def test_rows_over_the_limit_are_dropped_whole_and_counted(qwen_tokenizer):
    long = Example("long", "北京" * 200, [Span(0, 2, "地理实体", "北京")])
    encoded, report = encode_examples(qwen_tokenizer, TASK, EXAMPLES + [long], max_length=200)
    assert [e.id for e in encoded] == ["a", "b"]
    assert report.too_long == ["long"]


def test_compact_task_supervises_its_compact_answer_with_fewer_tokens(qwen_tokenizer):
    tok = qwen_tokenizer
    compact = Task(TASK.labels, "compact")
    json_rows, _ = encode_examples(tok, TASK, EXAMPLES, max_length=384)
    rows, _ = encode_examples(tok, compact, EXAMPLES, max_length=384)
    for ex, enc in zip(EXAMPLES, rows):
        assert tok.decode(enc.input_ids[:enc.answer_start]) == render_prompt(tok, compact, ex.text)
        assert tok.decode(enc.input_ids[enc.answer_start:-1]) == compact.format_answer(ex.entities)
    supervised = [len(e.input_ids) - e.answer_start for e in rows]
    json_supervised = [len(e.input_ids) - e.answer_start for e in json_rows]
    # three entities: about half the answer tokens; no entity: the same phrase
    assert supervised[0] < 0.6 * json_supervised[0] and supervised[1] == json_supervised[1]
