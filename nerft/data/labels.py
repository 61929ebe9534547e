"""Label maps: corpus label → the name the model sees in its instruction and answers.

Presets follow the worked example (SPEC.md) for ccfbdci; the others give each corpus label a
plain Chinese name. A user map (file or inline) is laid over the preset.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

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
    # Canonical files already carry the names the model should see.
    "canonical": {},
}


class LabelMapError(ValueError):
    pass


def parse_label_map(spec: str | None) -> dict[str, str]:
    """A map from a JSON/YAML file path or an inline `LOC=地点,PER=人名` string."""
    if not spec:
        return {}
    path = Path(spec)
    if path.suffix in (".json", ".yaml", ".yml"):
        if not path.is_file():
            raise LabelMapError(f"{path}: label map file not found")
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise LabelMapError(f"{path}: not valid {path.suffix[1:]}: {e}") from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise LabelMapError(f"{path}: expected a mapping of corpus label to name")
        return dict(data)
    mapping = {}
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise LabelMapError(f"label map item {item!r} is not CORPUS_LABEL=NAME")
        mapping[key.strip()] = value.strip()
    return mapping


def label_map_for(fmt: str, user_map: dict[str, str]) -> dict[str, str] | None:
    """The effective map for one format; None means labels pass through unchanged."""
    preset = PRESETS.get(fmt, {})
    if not preset and not user_map:
        return None
    return {**preset, **user_map}
