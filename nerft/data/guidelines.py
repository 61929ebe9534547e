"""Task guidelines: what each label means, written into the model's instruction.

A label may carry a short definition and a few examples of what is and is not one; the Task
writes them into the instruction (nerft.task.prompt), so they cost tokens in every prompt: the
limits below keep a guideline to a line. `nerft data prepare --labels FILE` records a user's;
nerft ships presets for the shipped corpora's labels (GUIDELINE_PRESETS), and
`data.guidelines` says which a run uses (nerft.data.prepared.PreparedData.task_guidelines).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nerft.data.labels import LabelMapError, label_problem, read_mapping_file

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
    return parse_guidelines(read_mapping_file(path, "guideline file", GuidelineError), str(path), labels)


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
        # Measured at 640 sentences (BENCHMARKS.md "Task guidelines"), these presets gain +10.9 F1
        # on 400 test sentences but move every 地点 to 地理实体; a rewritten LOC line ("不是国家或
        # 行政区划的地方: 洲、跨国跨省的大片地区、海峡两岸、山川河湖海岛、街道广场", examples 东南亚,
        # 云岭山) brought 地点 back to 20 F1 but the whole gain down to +3.9: this line stays.
        "LOC": {"description": "行政区划以外的地点: 山川河湖、地区、建筑",
                "examples": ["云岭山"], "not": ["临州市(地理实体)"]},
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
