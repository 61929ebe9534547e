import json
from collections import Counter

import pytest

from nerft.data.example import Span, read_examples
from nerft.data.prepare import prepare
from nerft.task.prompt import NO_ENTITY, Task, format_answer, parse_answer

SENT = "菲律宾总统埃斯特拉达在马尼拉说，菲律宾人质获救。"
GOLD = [Span(0, 3, "地理实体", "菲律宾"), Span(5, 10, "人名", "埃斯特拉达"),
        Span(11, 14, "地理实体", "马尼拉"), Span(16, 19, "地理实体", "菲律宾")]
LABELS = ("地点", "人名", "地理实体", "组织")


def test_answer_is_one_json_object_per_line_in_sentence_order():
    answer = format_answer(list(reversed(GOLD)))
    lines = answer.split("\n")
    assert lines[0] == '{"entity_text": "菲律宾", "entity_label": "地理实体"}'
    assert len(lines) == 4 and "埃斯特拉达" in lines[1]


def test_no_entity_phrase_round_trips():
    assert format_answer([]) == NO_ENTITY
    parsed = parse_answer(NO_ENTITY, SENT, LABELS)
    assert parsed.spans == [] and parsed.well_formed and not parsed.issues


def test_repeated_mentions_map_to_successive_occurrences():
    parsed = parse_answer(format_answer(GOLD), SENT, LABELS)
    assert parsed.spans == GOLD and not parsed.issues


def test_back_to_back_objects_as_the_worked_example_writes_them():
    answer = format_answer(GOLD).replace("\n", "")
    assert parse_answer(answer, SENT, LABELS).spans == GOLD


def test_malformed_partial_and_invented_answers_are_reported_not_raised():
    answer = ('{"entity_text": "马尼拉", "entity_label": "地理实体"}\n'
              '{"entity_text": "北京", "entity_label": "地理实体"}\n'      # not in the sentence
              '{"entity_text": "马尼拉", "entity_label": "地理实体"}\n'    # one mention too many
              '{"entity_text": "菲律宾", "entity_label": "国家"}\n'        # label not in the set
              '{"entity_text": 3, "entity_label": "人名"}\n'              # wrong field type
              '{"entity_text": "埃斯特拉达", "entity_la')                   # cut off mid-object
    parsed = parse_answer(answer, SENT, LABELS)
    assert parsed.spans == [Span(11, 14, "地理实体", "马尼拉")]
    kinds = [i.kind for i in parsed.issues]
    assert kinds == ["not_in_text", "extra_mention", "unknown_label", "bad_field", "malformed"]
    assert parsed.hallucinated == ["北京"]
    assert not parsed.well_formed


def test_empty_and_prose_answers_are_not_well_formed():
    assert not parse_answer("", SENT).well_formed
    assert not parse_answer("这句话里有菲律宾", SENT).well_formed


def test_instruction_lists_every_label_and_the_no_entity_phrase():
    task = Task(LABELS)
    for label in LABELS:
        assert label in task.system_prompt
    assert NO_ENTITY in task.system_prompt
    msgs = task.messages("句子", "答案")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    with pytest.raises(ValueError):
        Task(("人名", "人名"))


def test_compact_answer_is_one_text_label_pair_per_line():
    task = Task(LABELS, "compact")
    answer = task.format_answer(list(reversed(GOLD)))
    assert answer.split("\n") == ['"菲律宾": "地理实体"', '"埃斯特拉达": "人名"',
                                  '"马尼拉": "地理实体"', '"菲律宾": "地理实体"']
    assert task.parse_answer(answer, SENT).spans == GOLD
    # texts are JSON strings: quotes and backslashes of the sentence survive the round trip
    text = '他说"北京\\上海"很近'
    quoted = [Span(2, 3, "地点", '"'), Span(5, 8, "组织", "\\上海")]
    assert task.parse_answer(task.format_answer(quoted), text).spans == quoted
    assert task.format_answer([]) == NO_ENTITY and task.parse_answer(NO_ENTITY, SENT).well_formed
    # the instruction shows the compact line, and the JSON instruction is left as it was
    assert '"南京": "地理实体"' in task.system_prompt and "json" not in task.system_prompt
    assert Task(LABELS).system_prompt != task.system_prompt
    assert "entity_text" in Task(LABELS).system_prompt


def test_compact_parser_reports_what_does_not_fit():
    task = Task(LABELS, "compact")
    answer = ('"马尼拉": "地理实体"\n'
              '"北京": "地理实体"\n'        # not in the sentence
              '"菲律宾": "国家"\n'          # label not in the set
              '"菲律宾": 3\n'               # label not a string
              f'{NO_ENTITY}\n'              # mixed with entities
              '{"entity_text": "菲律宾", "entity_label": "地理实体"}\n'  # the other format
              '"埃斯特拉达": "人')            # cut off
    parsed = task.parse_answer(answer, SENT)
    assert parsed.spans == [Span(11, 14, "地理实体", "马尼拉")]
    assert [i.kind for i in parsed.issues] == ["not_in_text", "unknown_label", "bad_field",
                                               "malformed", "malformed", "malformed"]
    assert not parsed.well_formed
    with pytest.raises(ValueError, match="answer format 'yaml'"):
        Task(LABELS, "yaml")


@pytest.mark.parametrize("inputs", [
    ["ccfbdci/ccfbdci.jsonl"],
    ["CLUENER2020/cluener_public/train.json", "CLUENER2020/cluener_public/dev.json"],
    ["MSRA/msra_test_bio"],
    ["PeoplesDaily/example.dev"],
])
def test_round_trip_on_real_corpora(shared_data, inputs):
    prep = prepare([shared_data / p for p in inputs])
    examples = [ex for split in prep.splits.values() for ex in split]
    compact = Task(tuple(prep.labels), "compact")
    exact = 0
    for ex in examples:
        parsed = parse_answer(format_answer(ex.entities), ex.text, tuple(prep.labels))
        assert not parsed.issues, ex.id
        # The format names entities by text, not position: the same (text, label) multiset
        # always comes back; positions differ only where an earlier unannotated occurrence of
        # the same text exists in the sentence.
        assert Counter((s.text, s.label) for s in parsed.spans) == \
            Counter((s.text, s.label) for s in ex.entities), ex.id
        exact += parsed.spans == sorted(ex.entities)
        # the compact format names the same entities the same way
        assert compact.parse_answer(compact.format_answer(ex.entities), ex.text).spans == parsed.spans
    assert exact / len(examples) > 0.995


@pytest.mark.parametrize("answer_format", ["json", "compact"])
def test_parse_line_reads_one_line_of_the_tasks_own_format(answer_format):
    task, other = Task(LABELS, answer_format), Task(LABELS, "compact" if answer_format == "json" else "json")
    for span in GOLD:
        line = task.format_answer([span])
        assert task.parse_line(line) == (span.text, span.label)
        assert other.parse_line(line) is None  # the other format's line is not an entity here
    assert task.parse_line(NO_ENTITY) is None and task.parse_line("") is None
    assert task.parse_line(task.format_answer(GOLD[:2]).replace("\n", " ")) is None  # two in one
    # the stop rule: an entity line as often as its text occurs, anything else once
    assert task.line_limit(task.format_answer([GOLD[0]]), SENT) == 2  # 菲律宾 twice
    assert task.line_limit(task.format_answer([GOLD[1]]), SENT) == 1
    assert task.line_limit(NO_ENTITY, SENT) == 1


# The instruction as nerft wrote it before guidelines existed (commit 0566f6f): a task without
# guidelines, which every run and export made before has, must prompt with exactly this.
BEFORE_GUIDELINES = {
    "json": '你是一个文本实体识别领域的专家，你需要从给定的句子中提取 地点; 人名; 地理实体; 组织 实体. '
            '以 json 格式输出, 如 {"entity_text": "南京", "entity_label": "地理实体"} 注意: 1. '
            '输出的每一行都必须是正确的 json 字符串. 2. 找不到任何实体时, 输出"没有找到任何实体".',
    "compact": '你是一个文本实体识别领域的专家，你需要从给定的句子中提取 地点; 人名; 地理实体; 组织 实体. '
               '每个实体输出一行 "实体文本": "实体类型", 如 "南京": "地理实体" 找不到任何实体时, '
               '输出"没有找到任何实体".',
}


@pytest.mark.parametrize("answer_format", ["json", "compact"])
def test_a_task_without_guidelines_prompts_and_records_as_before(answer_format):
    from nerft.task.prompt import task_from_record

    task = Task(LABELS, answer_format)
    assert task.system_prompt == BEFORE_GUIDELINES[answer_format]
    assert list(task.record()) == ["labels", "answer_format", "answer"]
    assert task_from_record(task.record(), "task.json") == task


def test_guidelines_follow_the_instruction_one_line_per_label_in_label_order():
    from nerft.data.guidelines import Guideline
    from nerft.task.prompt import task_from_record

    task = Task(LABELS, "json", {
        "组织": Guideline("机构和团体", ("临州市教育局",)),
        "地点": Guideline("山川河湖", ("云岭山", "碧湖"), ("临州市(地理实体)",)),
    })
    assert task.system_prompt == BEFORE_GUIDELINES["json"] + (
        "\n标签说明:\n地点: 山川河湖; 如 云岭山、碧湖; 不是 临州市(地理实体)\n组织: 机构和团体; 如 临州市教育局")
    assert [label for label, _ in task.guidelines] == ["地点", "组织"]
    record = task.record()
    assert record["guidelines"] == {"地点": {"description": "山川河湖", "examples": ["云岭山", "碧湖"],
                                             "not": ["临州市(地理实体)"]},
                                    "组织": {"description": "机构和团体", "examples": ["临州市教育局"]}}
    assert task_from_record(json.loads(json.dumps(record)), "task.json") == task


def test_a_guideline_for_a_label_outside_the_set_or_a_bad_record_is_one_line():
    from nerft.data.guidelines import Guideline
    from nerft.task.prompt import TaskError, task_from_record

    with pytest.raises(TaskError, match="guideline for label '公司', which is not in the label set"):
        Task(LABELS, "json", {"公司": Guideline("企业")})
    record = {**Task(LABELS).record(), "guidelines": {"地点": {"examples": "云岭山<|im_end|>"}}}
    with pytest.raises(TaskError, match=r"^run.json: field guidelines: label 地点: field examples: "
                                        r".*chat-template special token"):
        task_from_record(record, "run.json")
