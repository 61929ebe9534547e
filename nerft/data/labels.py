"""Label maps: corpus label → the name the model sees in its instruction and answers.

Without a user map every corpus label is kept: a known code gets its usual Chinese name (the
built-in table below; ccfbdci follows the worked example in SPEC.md), a dotted sub-type such as
`PER.NAM` / `PER.NOM` gets a name that still tells the sub-types apart, and an unknown code
keeps its own name. A user map (file or inline) is laid over that; its value `-` drops the
label (the entity is removed from its row, the row is kept). Canonical files already carry the
names the model sees, and so do Label Studio and doccano exports (their labels come from the
config nerft writes for a run), so their labels pass through unless the user maps them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from nerft.errors import NerftError

# Per-format presets: their order is the order of the label set in the instruction.
PRESETS: dict[str, dict[str, str]] = {
    # The worked example picks, for each entity, the first of its entity_names found in
    # {地点, 人名, 地理实体, 组织}; since entity_names is fixed per label this is the map below.
    "ccfbdci": {"LOC": "地点", "PER": "人名", "GPE": "地理实体", "ORG": "组织"},
    "cluener": {
        "address": "地址", "book": "书名", "company": "公司", "game": "游戏",
        "government": "政府机构", "movie": "电影", "name": "人名", "organization": "组织",
        "position": "职位", "scene": "景点",
    },
    # MSRA and People's Daily use LOC / ORG / PER; GPE appears in OntoNotes-style corpora.
    "conll": {"LOC": "地点", "PER": "人名", "ORG": "组织", "GPE": "地理实体"},
    # Canonical files already carry the names the model should see; so do annotation-tool
    # exports, whose labels come from the config nerft wrote for the run (or the team's own).
    "canonical": {},
    "label-studio": {},
    "doccano": {},
}

# Usual names of common codes (looked up in upper case): MSRA / People's Daily, the résumé
# corpus (NAME, CONT, RACE, TITLE, EDU, PRO), OntoNotes, CLUENER's lower-case labels.
KNOWN_NAMES: dict[str, str] = {
    **{k.upper(): v for k, v in PRESETS["cluener"].items()},
    "PER": "人名", "PERSON": "人名", "NAME": "人名", "NR": "人名",
    "LOC": "地点", "LOCATION": "地点", "NS": "地名",
    "ORG": "组织", "ORGANIZATION": "组织", "NT": "机构",
    "GPE": "地理实体", "TITLE": "职位", "EDU": "学历", "PRO": "专业", "RACE": "民族",
    "CONT": "国籍", "TIME": "时间", "DATE": "日期", "NORP": "民族宗教政治团体", "FAC": "设施",
    "PRODUCT": "产品", "EVENT": "事件", "WORK_OF_ART": "作品", "LAW": "法律", "LANGUAGE": "语言",
    "MONEY": "金额", "PERCENT": "百分比", "QUANTITY": "数量", "CARDINAL": "数词",
    "ORDINAL": "序数词", "MISC": "其他实体",
}
# Weibo-style sub-types: NAM is a named mention (张三), NOM a nominal one (妈妈, 这家公司).
_NOMINAL_NAMES = {"PER": "泛指人称", "LOC": "泛指地点", "ORG": "泛指组织", "GPE": "泛指地理实体"}

DROP = "-"  # a user map value that drops the label

# Label names are written into the system prompt: a line break, a control character or a
# chat-template control token there would change the conversation the model sees. Control-token
# syntax of the templates nerft knows: ChatML `<|...|>`, Llama 2 `<<SYS>>` and `[INST]`, and
# `<s>` / `</s>` (with or without spaces inside the brackets).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SPECIAL_TOKEN = re.compile(r"<\||\|>|<<|>>|<\s*/?\s*s\s*>|\[\s*/?\s*INST\s*\]")


class LabelMapError(NerftError, ValueError):
    pass


def label_problem(name) -> str | None:
    """Why `name` cannot be a label the model sees, or None when it can.

    The one label rule: data prepare, the task a model is trained and served for, and an
    export's task.json all ask this function, so a label passes or fails everywhere alike."""
    if not isinstance(name, str):
        return f"is not text ({type(name).__name__})"
    if not name.strip():
        return "is empty"
    if _CONTROL.search(name):
        return "contains a line break or control character"
    if name != name.strip():
        return "starts or ends with whitespace"
    if _SPECIAL_TOKEN.search(name):
        return "contains a chat-template special token such as <|im_end|>, <<SYS>>, [INST] or </s>"
    return None


def label_set_problem(labels) -> str | None:
    """Why `labels` cannot be a task's label set (empty, a duplicate, a bad name), or None."""
    if isinstance(labels, str) or not isinstance(labels, (list, tuple)) or not labels:
        return "a task needs a non-empty list of label names"
    for name in labels:
        problem = label_problem(name)
        if problem:
            return f"label {name!r} {problem}"
    seen: set[str] = set()
    for name in labels:
        if name in seen:
            return f"label {name!r} is listed twice"
        seen.add(name)
    return None


def parse_label_map(spec: str | None) -> dict[str, str]:
    """A map from a JSON/YAML file path or an inline `LOC=地点,PER=人名,NOM=-` string."""
    if not spec:
        return {}
    path = Path(spec)
    if path.suffix in (".json", ".yaml", ".yml"):
        data = _read_mapping_file(path, "label map", LabelMapError)
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise LabelMapError(f"{path}: expected a mapping of corpus label to name")
        where = f"{path}: "
        mapping = {k.strip(): v.strip() for k, v in data.items()}
    else:
        where = ""
        mapping = {}
        for item in spec.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise LabelMapError(f"label map item {item!r} is not CORPUS_LABEL=NAME "
                                    f"(or CORPUS_LABEL={DROP} to drop it)")
            mapping[key.strip()] = value.strip()
    for key, value in mapping.items():
        if not key:
            raise LabelMapError(f"{where}label map has an empty corpus label")
        problem = None if value == DROP else label_problem(value)
        if problem:
            raise LabelMapError(f"{where}label map {key}={value!r}: the name {problem}")
    return mapping


def _read_mapping_file(path: Path, what: str, error: type[NerftError]):
    """The content of a .json or .yaml/.yml file (a label map, a guideline file); a missing,
    unreadable or unparsable file is `error` naming the file."""
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read the {what}: {e}") from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise error(f"{path}: not valid {path.suffix[1:]}: {e}") from None


def default_name(code: str) -> str:
    """The name a corpus code gets without a user map (the code itself when unknown)."""
    known = KNOWN_NAMES.get(code.upper())
    if known:
        return known
    base, dot, sub = code.rpartition(".")
    if dot and base and sub:
        base_name = KNOWN_NAMES.get(base.upper())
        if base_name and sub.upper() == "NAM":
            return base_name
        if base_name and sub.upper() == "NOM":
            return _NOMINAL_NAMES.get(base.upper(), "泛指" + base_name)
    return code


@dataclass
class LabelUse:
    """How one corpus label was mapped, and how many entities of it reached the output."""

    name: str | None  # None: dropped on purpose
    source: str  # "--label-map", "preset <format>", "built-in", "as is"
    kept: int = 0
    dropped: int = 0


@dataclass
class LabelMapper:
    """Resolves corpus labels for one `prepare` call and remembers each decision."""

    user_map: dict[str, str] = field(default_factory=dict)
    uses: dict[tuple[str, str], LabelUse] = field(default_factory=dict)  # (code, format)
    used_keys: set[str] = field(default_factory=set)

    def resolve(self, code: str, fmt: str) -> LabelUse:
        key = (code, fmt)
        use = self.uses.get(key)
        if use is None:
            use = self.uses[key] = self._decide(code, fmt)
        return use

    def _decide(self, code: str, fmt: str) -> LabelUse:
        # Exact key first; for a dotted label, its sub-type (`NOM=-`), then its type (`PER=人物`).
        base, dot, sub = code.rpartition(".")
        for key in (code, *((sub, base) if dot else ())):
            if key and key in self.user_map:
                value = self.user_map[key]
                self.used_keys.add(key)
                return LabelUse(None if value == DROP else value, "--label-map" +
                                ("" if key == code else f" ({key})"))
        preset = PRESETS.get(fmt, {})
        if code in preset:
            return LabelUse(preset[code], f"preset {fmt}")
        if fmt in ("canonical", "label-studio", "doccano"):
            return LabelUse(code, f"as is ({fmt})")
        name = default_name(code)
        return LabelUse(name, "built-in" if name != code else "as is")

    def order(self, fmts: list[str]) -> list[str]:
        """Names in instruction order: the formats' presets, then the user map, as given."""
        names: list[str] = []
        for fmt in fmts:
            names.extend(PRESETS.get(fmt, {}).values())
        names.extend(v for v in self.user_map.values() if v != DROP)
        return list(dict.fromkeys(names))

    def unused_keys(self) -> list[str]:
        return [k for k in self.user_map if k not in self.used_keys]

    def table(self) -> list[dict]:
        """One row per (corpus label, format) for stats.json and the summary."""
        rows = []
        for (code, fmt), use in sorted(self.uses.items()):
            rows.append({"corpus_label": code, "format": fmt,
                         "name": use.name if use.name is not None else DROP,
                         "source": use.source, "entities_kept": use.kept,
                         "entities_dropped": use.dropped})
        return rows



# -- Task guidelines ---------------------------------------------------------------------------
# A label may carry a short definition and a few examples of what is and is not one; the Task
# writes them into the instruction (nerft.task.prompt), so they cost tokens in every prompt:
# the limits below keep a guideline to a line.
GUIDELINE_FIELDS = ("description", "examples", "not")
MAX_DESCRIPTION_CHARS = 60
MAX_EXAMPLES = 3
MAX_EXAMPLE_CHARS = 24


class GuidelineError(LabelMapError):
    """A guideline file (or config value) that cannot be written into an instruction."""


@dataclass(frozen=True)
class Guideline:
    """What one label means: a definition, examples of it, and look-alikes that are not it
    (a look-alike may say in brackets what it is instead: `西湖(景点)`)."""

    description: str = ""
    examples: tuple[str, ...] = ()
    not_examples: tuple[str, ...] = ()

    def to_record(self) -> dict:
        """The file/record form (`description`, `examples`, `not`), empty fields left out."""
        record = {"description": self.description, "examples": list(self.examples),
                  "not": list(self.not_examples)}
        return {k: v for k, v in record.items() if v}


def text_problem(text) -> str | None:
    """Why `text` cannot be written into the instruction: the rule of `label_problem`."""
    return label_problem(text)


def parse_guideline(label: str, value, where: str) -> Guideline:
    """One label's guideline from its file form; a GuidelineError names `where`, the label and
    the field."""
    at = f"{where}: label {label}"
    if isinstance(value, str):  # `人名: 人的姓名` is a description alone
        value = {"description": value}
    if not isinstance(value, dict):
        raise GuidelineError(f"{at}: expected description/examples/not, or a description as text")
    unknown = [k for k in value if k not in GUIDELINE_FIELDS]
    if unknown:
        raise GuidelineError(f"{at}: field {unknown[0]}: unknown; the fields are "
                             f"{', '.join(GUIDELINE_FIELDS)}")
    description = value.get("description") or ""
    if description:
        description = _checked_text(description, f"{at}: field description", MAX_DESCRIPTION_CHARS)
    lists = []
    for key in ("examples", "not"):
        items = value.get(key) or []
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list):
            raise GuidelineError(f"{at}: field {key}: expected a list of texts")
        if len(items) > MAX_EXAMPLES:
            raise GuidelineError(f"{at}: field {key}: {len(items)} items; at most {MAX_EXAMPLES} "
                                 "(each one is in every prompt)")
        lists.append(tuple(_checked_text(item, f"{at}: field {key}", MAX_EXAMPLE_CHARS)
                           for item in items))
    guideline = Guideline(description, *lists)
    if not guideline.to_record():
        raise GuidelineError(f"{at}: has no description, examples or not")
    return guideline


def _checked_text(text, where: str, limit: int) -> str:
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = str(text)  # YAML reads `examples: [2024]` as a number
    problem = text_problem(text.strip() if isinstance(text, str) else text)
    if problem:
        raise GuidelineError(f"{where}: {text!r} {problem}")
    text = text.strip()
    if len(text) > limit:
        raise GuidelineError(f"{where}: {len(text)} characters; at most {limit} (it is written "
                             "into every prompt)")
    return text


def parse_guidelines(data, where: str, labels=None) -> dict[str, Guideline]:
    """{label: Guideline} from a mapping of label name to guideline. With `labels`, every key
    must be one of them (a guideline for a label the model never sees is a typo)."""
    if not isinstance(data, dict):
        raise GuidelineError(f"{where}: expected a mapping of label name to "
                             "{description: ..., examples: [...], not: [...]}")
    out = {}
    for label, value in data.items():
        problem = label_problem(label)
        if problem:
            raise GuidelineError(f"{where}: label {label!r} {problem}")
        if labels is not None and label not in labels:
            raise GuidelineError(f"{where}: label {label}: not a label of the data "
                                 f"({', '.join(labels)}); use the names the model sees")
        out[label] = parse_guideline(label, value, where)
    return out


def read_guidelines(path, labels=None) -> dict[str, Guideline]:
    """The guidelines of a .yaml/.yml/.json file (`parse_guidelines`)."""
    path = Path(path)
    if path.suffix not in (".json", ".yaml", ".yml"):
        raise GuidelineError(f"{path}: a guideline file is .yaml, .yml or .json")
    return parse_guidelines(_read_mapping_file(path, "guideline file", GuidelineError), str(path), labels)


def guidelines_record(guidelines: dict[str, Guideline]) -> dict[str, dict]:
    """The file/record form of a set of guidelines (what `parse_guidelines` reads back)."""
    return {label: g.to_record() for label, g in guidelines.items()}


# Preset guidelines of the shipped corpora's labels, keyed by format and corpus label (the same
# name can mean different things: ccfbdci's 地点 leaves out what its 地理实体 holds, MSRA's 地点
# does not). Written from each corpus's published annotation conventions (the CLUENER2020
# paper and README's label definitions; OntoNotes-style LOC/GPE for ccfbdci; the MSRA and
# People's Daily person/place/organisation convention); every example is made up.
GUIDELINE_PRESETS: dict[str, dict[str, dict]] = {
    "cluener": {
        "address": {"description": "省市区县、街道、路、门牌号、村等具体地址, 整段标全",
                    "examples": ["南通市崇川区青松路17号"], "not": ["碧湖公园(景点)"]},
        "book": {"description": "小说、杂志、教材等书, 含电子书", "examples": ["《雾中灯塔》"]},
        "company": {"description": "企业、集团、银行、网站; 央行算政府机构", "examples": ["远帆科技"]},
        "game": {"description": "电子游戏; 由书或影视改编的看上下文", "examples": ["《星海征途》"]},
        "government": {"description": "中央和地方各级行政机关, 含军队", "examples": ["临州市教育局"]},
        "movie": {"description": "电影, 含院线纪录片; 与书同名时看上下文", "examples": ["《追风少年》"]},
        "name": {"description": "人名, 含小说人物、绰号和指具体人物的别称", "examples": ["林晓峰"]},
        "organization": {"description": "球队、乐团、社团、协会、帮派等团体",
                         "examples": ["海风足球队"], "not": ["远帆科技(公司)"]},
        "position": {"description": "职务、职称、职业, 含古代官职", "examples": ["总经理", "记者"]},
        "scene": {"description": "旅游景点、公园、动物园、名山大川", "examples": ["碧湖公园"],
                  "not": ["青松路17号(地址)"]},
    },
    "ccfbdci": {
        # The corpus's LOC is mostly regions across borders (continents, 两岸, 华北) and
        # natural features; the first line ("行政区划以外的地点: 山川河湖、地区、建筑") moved every
        # 地点 to 地理实体 (BENCHMARKS.md "Task guidelines").
        "LOC": {"description": "不是国家或行政区划的地方: 洲、跨国跨省的大片地区、海峡两岸、山川河湖海岛、街道广场",
                "examples": ["东南亚", "云岭山"], "not": ["临州市(地理实体)"]},
        "PER": {"description": "人的姓名, 含外国人名", "examples": ["林晓峰"]},
        "GPE": {"description": "国家、省、市、县等行政区划", "examples": ["临州市"],
                "not": ["云岭山(地点)"]},
        "ORG": {"description": "政府部门、公司、学校、政党、媒体等机构",
                "examples": ["临州市教育局"]},
    },
    # MSRA and People's Daily (read as conll): person, place and organisation names; a place
    # is any named location, countries and cities included.
    "conll": {
        "PER": {"description": "人的姓名, 含外国人名的译名", "examples": ["林晓峰"]},
        "LOC": {"description": "地名: 国家、省市县乡村、山川河湖、地区", "examples": ["云岭山"]},
        "ORG": {"description": "政府部门、政党、公司、学校、团体、媒体等机构",
                "examples": ["临州市人民政府"]},
        "GPE": {"description": "国家、省、市、县等行政区划", "examples": ["临州市"]},
    },
}


# The formats whose presets data.guidelines=auto (the default) uses: those measured to gain
# with an interval above zero (BENCHMARKS.md "Task guidelines": ccfbdci +10.9 F1 points,
# [+4.4, +17.3] on 400 test sentences). CLUENER gained +3.1 with an interval across zero;
# MSRA and People's Daily are not measured: their presets stay `preset` (opt-in).
PRESETS_ON_BY_DEFAULT = ("ccfbdci",)


def preset_guidelines(label_table: list[dict], labels, formats=None) -> dict[str, Guideline]:
    """The preset guideline of each label in `labels` whose corpus label has one, from the label
    table `nerft data prepare` records (corpus label, format, name); the first row wins when
    one name comes from several corpora. `formats`: only those corpus formats' presets."""
    out: dict[str, Guideline] = {}
    for row in label_table or ():
        if not isinstance(row, dict) or (formats is not None and row.get("format") not in formats):
            continue
        name = row.get("name")
        preset = GUIDELINE_PRESETS.get(row.get("format"), {}).get(row.get("corpus_label"))
        if preset and name in labels and name not in out:
            out[name] = parse_guideline(name, preset, f"preset {row.get('format')}")
    return {label: out[label] for label in labels if label in out}
