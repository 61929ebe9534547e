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
        data = read_mapping_file(path, "label map", LabelMapError)
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


def read_mapping_file(path: Path, what: str, error: type[NerftError]):
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
