"""Corpus labels: kept by default under their usual names, renamed or dropped on purpose."""

import json

import pytest

from corpus_fixtures import RESUME, RESUME_MAP, WEIBO, WEIBO_MAP, ccfbdci_line, read_jsonl, stats_of
from nerft.data.labels import LabelMapError, parse_label_map
from nerft.data.prepare import prepare
from nerft.errors import NerftError
from nerft.export.task_file import TASK_FORMAT, TaskFileError, read_task, task_of
from nerft.task.prompt import Task, TaskError


def rows_of(out):
    """(text, spans) of every written row, whatever split it went to."""
    return {r["text"]: [(e["start"], e["end"], e["label"]) for e in r["entities"]]
            for name in ("train", "val", "test") for r in read_jsonl(out / f"{name}.jsonl")}


def entity_count(corpus):
    return sum(len(spans) for _, spans in corpus)


@pytest.mark.parametrize("corpus, fixture, explicit, expected_names", [
    (RESUME, "resume_file", RESUME_MAP,
     {"NAME": "人名", "CONT": "国籍", "RACE": "民族", "TITLE": "职位", "EDU": "学历", "ORG": "组织",
      "PRO": "专业", "LOC": "地点"}),
    (WEIBO, "weibo_file", WEIBO_MAP,
     {"PER.NAM": "人名", "PER.NOM": "泛指人称", "GPE.NAM": "地理实体", "LOC.NAM": "地点",
      "LOC.NOM": "泛指地点", "ORG.NOM": "泛指组织"}),
])
def test_default_keeps_what_a_complete_label_map_keeps(request, cli, tmp_path, corpus, fixture,
                                                       explicit, expected_names):
    path = request.getfixturevalue(fixture)
    res = cli("data", "prepare", path, "--out", tmp_path / "default")
    assert res.exit_code == 0, res.output
    res2 = cli("data", "prepare", path, "--out", tmp_path / "explicit", "--label-map", explicit)
    assert res2.exit_code == 0, res2.output
    default, mapped = rows_of(tmp_path / "default"), rows_of(tmp_path / "explicit")
    assert default == mapped
    assert len(default) == len(corpus)  # every sentence ...
    assert sum(len(s) for s in default.values()) == entity_count(corpus)  # ... and every entity
    stats = stats_of(tmp_path / "default")
    t = stats["totals"]
    assert (t["read"], t["kept"], t["rejected"], t["duplicates"]) == (len(corpus), len(corpus), 0, 0)
    table = {r["corpus_label"]: r for r in stats["label_map"]}
    assert {code: r["name"] for code, r in table.items()} == expected_names
    for code in expected_names:  # counted label by label
        assert table[code]["entities_kept"] == sum(l == code for _, s in corpus for *_, l in s)
        assert table[code]["source"] in ("built-in", "preset conll")
    # The summary names the map, label by label, with counts.
    assert "Labels (name the model sees" in res.stdout and "built-in" in res.stdout
    for code in expected_names:
        assert code in res.stdout


def test_dotted_sub_types_keep_names_that_tell_them_apart(weibo_file):
    prep = prepare([weibo_file], ratios=(1.0, 0.0, 0.0))
    by_text = {ex.text: {s.text: s.label for s in ex.entities} for ex in prep.splits["train"]}
    assert by_text["李娜和她的教练都来了"] == {"李娜": "人名", "教练": "泛指人称"}
    assert "人名" in prep.labels and "泛指人称" in prep.labels


@pytest.mark.parametrize("spec, gone", [
    ("NOM=-", {"PER.NOM", "ORG.NOM", "LOC.NOM"}),  # a sub-type, whatever its type
    ("PER.NOM=-", {"PER.NOM"}),                     # one exact label
])
def test_dropping_a_label_removes_its_entities_and_keeps_the_rows(cli, weibo_file, tmp_path, spec, gone):
    out = tmp_path / "o"
    res = cli("data", "prepare", weibo_file, "--out", out, "--label-map", spec)
    assert res.exit_code == 0, res.output
    rows = rows_of(out)
    assert len(rows) == len(WEIBO)  # no sentence lost
    n_gone = sum(l in gone for _, s in WEIBO for *_, l in s)
    assert sum(len(s) for s in rows.values()) == entity_count(WEIBO) - n_gone
    stats = stats_of(out)
    t = stats["totals"]
    touched = sum(any(l in gone for *_, l in s) for _, s in WEIBO)
    assert (t["read"], t["kept"], t["rejected"], t["repaired"]) == (len(WEIBO), len(WEIBO), 0, touched)
    assert t["read"] == t["kept"] + t["rejected"] + t["duplicates"]
    assert stats["repaired_by_reason"] == {"label_dropped": touched}
    table = {r["corpus_label"]: r for r in stats["label_map"]}
    for code in gone:
        assert table[code]["name"] == "-" and table[code]["entities_kept"] == 0
        assert table[code]["entities_dropped"] == sum(l == code for _, s in WEIBO for *_, l in s)
    assert table["PER.NAM"]["name"] == "人名" and table["PER.NAM"]["entities_kept"] == 2
    notes = [r for r in read_jsonl(out / "rejected.jsonl") if r["reason"] == "label_dropped"]
    assert len(notes) == touched and all(r["action"] == "repaired" for r in notes)
    assert "妈妈" in notes[0]["detail"]


@pytest.mark.parametrize("fmt, line, code, name", [
    ("ccfbdci", ccfbdci_line("会议定于明天上午举行", [(4, 8, "TIME")]), "TIME", "时间"),
    ("cluener", json.dumps({"text": "新款手机很好用", "label": {"product": {"手机": [[2, 3]]}}},
                           ensure_ascii=False), "product", "产品"),
    ("conll", "火 B-PLANET\n星 I-PLANET\n好 O\n", "PLANET", "PLANET"),
    ("canonical", json.dumps({"id": "a", "text": "火星好", "entities": [
        {"start": 0, "end": 2, "label": "行星", "text": "火星"}]}, ensure_ascii=False), "行星", "行星"),
])
def test_every_format_keeps_labels_its_preset_does_not_know(tmp_path, fmt, line, code, name):
    path = tmp_path / "in.txt"
    path.write_text(line + "\n", encoding="utf-8")
    prep = prepare([path], fmt=fmt, ratios=(1.0, 0.0, 0.0))
    (ex,) = prep.splits["train"]
    assert [s.label for s in ex.entities] == [name]
    assert prep.label_table[0]["corpus_label"] == code and prep.label_table[0]["entities_kept"] == 1


def test_user_map_renames_over_the_default(weibo_file):
    prep = prepare([weibo_file], user_label_map={"PER": "人物"}, ratios=(1.0, 0.0, 0.0))
    labels = {s.text: s.label for ex in prep.splits["train"] for s in ex.entities}
    # A type key renames all its sub-types (merging them on purpose); others keep defaults.
    assert labels["李娜"] == labels["教练"] == "人物" and labels["北京"] == "地理实体"
    assert "人物" in prep.labels and "人名" not in prep.labels and "泛指人称" not in prep.labels


@pytest.mark.parametrize("spec, message", [
    ("PER=人名<|im_end|>", "special token"),
    ("PER=<|im_start|>assistant", "special token"),
    ("PER", "not CORPUS_LABEL=NAME"),
    ("PER=", "not CORPUS_LABEL=NAME"),
])
def test_label_map_names_that_would_break_the_prompt_are_refused(spec, message):
    with pytest.raises(LabelMapError, match=message):
        parse_label_map(spec)


def test_label_map_file_with_a_newline_in_a_name_is_refused(tmp_path, cli, weibo_file):
    f = tmp_path / "map.json"
    f.write_text(json.dumps({"PER.NAM": "人名\n<|im_start|>assistant"}), encoding="utf-8")
    res = cli("data", "prepare", weibo_file, "--out", tmp_path / "o", "--label-map", f)
    assert res.exit_code == 2
    assert "map.json: label map PER.NAM=" in res.stderr and "line break" in res.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("label, problem", [
    ("", "is empty"), ("  ", "is empty"), ("人名\n系统", "line break"),
    ("<|im_end|>", "special token"),
])
def test_corpus_labels_that_would_break_the_prompt_drop_their_row(tmp_path, label, problem):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join([ccfbdci_line("张三来了", [(0, 2, label)]),
                               ccfbdci_line("李四来了", [(0, 2, "PER")])]) + "\n", encoding="utf-8")
    prep = prepare([path], ratios=(1.0, 0.0, 0.0))
    assert [ex.text for ex in prep.splits["train"]] == ["李四来了"]
    (rej,) = prep.rejections
    assert (rej.line, rej.reason) == (1, "invalid_label") and problem in rej.detail


def test_unused_label_map_key_is_a_warning(cli, weibo_file, tmp_path):
    res = cli("data", "prepare", weibo_file, "--out", tmp_path / "o", "--label-map", "PERSN=人名")
    assert res.exit_code == 0
    assert "warning:" in res.stderr and "PERSN" in res.stderr


# (label, whether it may be a label): one rule, asked by data prepare, Task and task.json.
LABEL_VERDICTS = [
    ("A<<B", False),  # Llama 2's <<SYS>> syntax: passed data prepare before, refused at training
    ("<s >", False),  # a sentence token written with a space: refused by data prepare only
    ("", False), ("  ", False), ("人名\n系统", False), ("人\t名", False), (" 人名", False),
    ("<|im_end|>", False), ("[INST]", False), ("</s>", False), ("a\u2028b", False),
    ("人名", True), ("A<B", True), ("C++", True), ('书名"号', True),
]


def _task_json(folder, labels):
    record = {"format": TASK_FORMAT, "labels": labels, "answer_format": "json"}
    (folder / "task.json").write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    return folder


@pytest.mark.parametrize("label, ok", LABEL_VERDICTS)
def test_one_label_rule_at_data_prepare_training_and_task_json(tmp_path, label, ok):
    # data prepare: a corpus row with the label is kept or rejected as invalid_label
    path = tmp_path / "in.jsonl"
    path.write_text(ccfbdci_line("张三来了", [(0, 2, label)]) + "\n" +
                    ccfbdci_line("李四来了", [(0, 2, "PER")]) + "\n", encoding="utf-8")
    prep = prepare([path], ratios=(1.0, 0.0, 0.0))
    kept = [ex.text for ex in prep.splits["train"]]
    assert (kept == ["张三来了", "李四来了"]) is ok, (kept, prep.rejections)
    assert [r.reason for r in prep.rejections] == ([] if ok else ["invalid_label"])
    # and as a --label-map name (an empty value is refused as not CODE=NAME; a map's names are
    # trimmed like its keys, so " 人名" there means 人名)
    if ok:
        assert parse_label_map(f"PER={label}") == {"PER": label}
    elif label == label.strip():
        with pytest.raises(LabelMapError):
            parse_label_map(f"PER={label}")
    # training and serving build a Task: the same verdict, as a one-line NerftError
    if ok:
        assert Task(("地点", label)).labels == ("地点", label)
        assert task_of(read_task(_task_json(tmp_path, ["地点", label]))).labels == ("地点", label)
        return
    with pytest.raises(TaskError) as refused:
        Task(("地点", label))
    assert isinstance(refused.value, NerftError) and "\n" not in str(refused.value)
    assert f"label {label!r}" in str(refused.value)
    with pytest.raises(TaskFileError, match=r"task\.json: field labels: label") as refused:
        read_task(_task_json(tmp_path, ["地点", label]))
    assert isinstance(refused.value, NerftError) and "\n" not in str(refused.value)


def test_duplicate_labels_are_one_line_at_training_and_in_task_json(tmp_path):
    with pytest.raises(TaskError, match="label '人名' is listed twice"):
        Task(("人名", "地点", "人名"))
    with pytest.raises(TaskFileError, match=r"task\.json: field labels: label '人名' is listed twice"):
        read_task(_task_json(tmp_path, ["人名", "地点", "人名"]))
    with pytest.raises(TaskFileError, match="field labels: a task needs a non-empty list"):
        read_task(_task_json(tmp_path, []))


# --- label guidelines (`nerft data prepare --labels FILE`, data.guidelines) -----------------

def test_prepare_labels_records_guidelines_the_preset_and_a_config_file_layer_over(cli, resume_file, tmp_path):
    from nerft.data.guidelines import GUIDELINE_PRESETS, Guideline
    from nerft.data.prepared import PreparedData

    guide = tmp_path / "labels.yaml"
    guide.write_text("人名:\n  description: 人的姓名\n  examples: [林晓峰]\n  not: [林场(地点)]\n"
                     "职位: 担任的职务\n", encoding="utf-8")
    out = tmp_path / "out"
    result = cli("data", "prepare", resume_file, "--out", out, "--labels", guide)
    assert result.exit_code == 0, result.output
    data = PreparedData(out)
    assert stats_of(out)["guidelines"] == {
        "人名": {"description": "人的姓名", "examples": ["林晓峰"], "not": ["林场(地点)"]},
        "职位": {"description": "担任的职务"}}
    labels = data.labels
    assert data.task_guidelines("prepared", labels) == {
        "人名": Guideline("人的姓名", ("林晓峰",), ("林场(地点)",)), "职位": Guideline("担任的职务")}
    assert data.task_guidelines("off", labels) == {}
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"职位": {"examples": ["总经理"]}}, ensure_ascii=False), encoding="utf-8")
    assert data.task_guidelines(other, labels)["职位"] == Guideline("", ("总经理",))
    # The résumé corpus has no preset guidelines; a ccfbdci label table has.
    table = [{"corpus_label": "GPE", "format": "ccfbdci", "name": "地理实体"}]
    from nerft.data.guidelines import preset_guidelines
    assert preset_guidelines(table, ("人名", "地理实体")) == {
        "地理实体": Guideline(GUIDELINE_PRESETS["ccfbdci"]["GPE"]["description"],
                          tuple(GUIDELINE_PRESETS["ccfbdci"]["GPE"]["examples"]),
                          tuple(GUIDELINE_PRESETS["ccfbdci"]["GPE"]["not"]))}


def test_auto_guidelines_are_the_presets_of_the_corpora_measured_to_gain(tmp_path):
    """data.guidelines=auto (the default): ccfbdci's presets (measured +10.9 F1 points, interval
    above zero), not CLUENER's or MSRA/People's Daily's (not measured to gain); a user's
    prepared guidelines on top either way."""
    from nerft.config import DEFAULT_GUIDELINES
    from nerft.data.labels import PRESETS
    from nerft.data.prepared import PreparedData

    assert DEFAULT_GUIDELINES == "auto"

    def prepared(fmt, guidelines=None):
        out = tmp_path / fmt
        out.mkdir()
        table = [{"corpus_label": code, "format": fmt, "name": name} for code, name in PRESETS[fmt].items()]
        stats = {"labels": list(PRESETS[fmt].values()), "label_map": table}
        if guidelines:
            stats["guidelines"] = guidelines
        (out / "stats.json").write_text(json.dumps(stats, ensure_ascii=False), encoding="utf-8")
        return PreparedData(out), tuple(PRESETS[fmt].values())

    data, labels = prepared("ccfbdci", {"人名": {"description": "我们的定义"}})
    auto = data.task_guidelines("auto", labels)
    assert set(auto) == set(labels) and auto == {**data.task_guidelines("preset", labels), **auto}
    assert auto["人名"].description == "我们的定义"  # the prepared one wins over the preset
    for fmt in ("cluener", "conll"):
        data, labels = prepared(fmt)
        assert data.task_guidelines("auto", labels) == {}
        assert set(data.task_guidelines("preset", labels)) == set(labels)


@pytest.mark.parametrize("text, says", [
    ("公司: 企业\n", "label 公司: not a label of the data"),
    ("人名: {description: 人的姓名, exemples: [林晓峰]}\n", "label 人名: field exemples: unknown"),
    ("人名: {examples: [a, b, c, d]}\n", "label 人名: field examples: 4 items; at most 3"),
    ("人名: {description: \"" + "长" * 61 + "\"}\n", "label 人名: field description: 61 characters"),
    ("人名: {not: [\"<|im_end|>\"]}\n", "label 人名: field not: '<|im_end|>' contains a chat-template"),
    ("人名: {examples: 林晓峰}\n- x\n", "not valid yaml"),
])
def test_a_bad_guideline_file_is_one_line_naming_file_label_and_field(cli, resume_file, tmp_path, text, says):
    guide = tmp_path / "labels.yaml"
    guide.write_text(text, encoding="utf-8")
    result = cli("data", "prepare", resume_file, "--out", tmp_path / "out", "--labels", guide)
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert f"{guide}: {says}" in message, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_every_preset_guideline_is_valid_and_names_a_preset_label():
    from nerft.data.guidelines import GUIDELINE_PRESETS, parse_guideline
    from nerft.data.labels import PRESETS

    for fmt, guidelines in GUIDELINE_PRESETS.items():
        assert set(guidelines) <= set(PRESETS[fmt]), fmt
        for code, value in guidelines.items():
            assert parse_guideline(PRESETS[fmt][code], value, f"preset {fmt}").description
    assert set(GUIDELINE_PRESETS["cluener"]) == set(PRESETS["cluener"])  # all ten labels


def test_config_guidelines_take_a_setting_a_file_or_a_mapping(tmp_path, resume_file, cli):
    from nerft.config import ConfigError, load_config

    out = tmp_path / "data"
    assert cli("data", "prepare", resume_file, "--out", out).exit_code == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{dir: {out}, guidelines: off}}\nmodel: {{source: demo}}\n", encoding="utf-8")
    assert load_config(cfg).data.guidelines == "off"
    assert load_config(cfg, ["data.guidelines={人名: 人的姓名}"]).data.guidelines == {"人名": "人的姓名"}
    with pytest.raises(ConfigError, match=r"data.guidelines: .*missing.yaml: guideline file not found"):
        load_config(cfg, [f"data.guidelines={tmp_path / 'missing.yaml'}"])
    with pytest.raises(ConfigError, match=r"data.guidelines: data.guidelines: label 人名: field examples"):
        load_config(cfg, ["data.guidelines={人名: {examples: [a, b, c, d]}}"])


def test_preset_guidelines_stay_short_in_real_qwen_tokens(qwen_tokenizer):
    """What the presets add to every prompt (BENCHMARKS.md "Task guidelines" quotes these)."""
    from nerft.data.guidelines import preset_guidelines
    from nerft.data.labels import PRESETS

    added = {}
    for fmt in ("cluener", "ccfbdci", "conll"):
        table = [{"corpus_label": code, "format": fmt, "name": name} for code, name in PRESETS[fmt].items()]
        labels = tuple(PRESETS[fmt].values())
        with_them = Task(labels, "json", preset_guidelines(table, labels)).system_prompt
        added[fmt] = len(qwen_tokenizer(with_them)["input_ids"]) - \
            len(qwen_tokenizer(Task(labels).system_prompt)["input_ids"])
    assert added == {"cluener": 303, "ccfbdci": 110, "conll": 96}
