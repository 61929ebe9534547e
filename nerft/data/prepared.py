"""The output folder of `nerft data prepare`: the one reader and writer of its files.

A prepared folder holds one canonical JSONL file per split, `rejected.jsonl` (every dropped or
repaired row with its reason) and `stats.json` (counts, the label order, the split policy).
Nothing else in nerft spells these names: training, eval, config checks and run records ask
`PreparedData` for a split's path, rows, hash or the label set.

Writing replaces the whole folder in one swap (built beside it, `stats.json` written last as
the finished marker); files the user keeps in the folder are carried over. A kill at any point
leaves the previous output or the new one, and the next write completes or undoes the swap.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from nerft import atomic
from nerft.cache import sha256_file
from nerft.data.example import Example, read_examples, write_jsonl
from nerft.data.guidelines import (PRESETS_ON_BY_DEFAULT, Guideline, parse_guidelines, preset_guidelines,
                                   read_guidelines)
from nerft.data.readers import DataError
from nerft.data.split import SPLITS

STATS_FILE = "stats.json"
REJECTED_FILE = "rejected.jsonl"
_SPLIT_SUFFIX = ".jsonl"
# data.guidelines' named settings (`task_guidelines`); a file or mapping is the other kind.
GUIDELINE_SOURCES = ("auto", "prepared", "preset", "off")


def split_file_name(split: str) -> str:
    return split + _SPLIT_SUFFIX


OUTPUT_FILES = (*(split_file_name(s) for s in SPLITS), REJECTED_FILE, STATS_FILE)


class NotPreparedData(DataError):
    """A folder given as prepared data lacks a file `nerft data prepare` writes."""


class OutputTaken(DataError):
    """`--out` holds something `nerft data prepare` must not replace without --force."""


@dataclass(frozen=True)
class PreparedData:
    folder: Path

    def __post_init__(self):
        object.__setattr__(self, "folder", Path(self.folder))

    # --- reading -------------------------------------------------------------------------

    @classmethod
    def open(cls, folder: Path, needs: Iterable[str] = ("train", "val")) -> "PreparedData":
        """The prepared folder `folder`; the error names the first split file it lacks."""
        data = cls(folder)
        for split in needs:
            if not data.split(split).is_file():
                raise NotPreparedData(f"{data.split(split)} not found; run `nerft data prepare "
                                      f"... --out {data.folder}` first")
        return data

    @classmethod
    def of_split_file(cls, path: Path) -> tuple["PreparedData", str] | None:
        """(folder, split) when `path` is a split file of a prepared folder, else None."""
        path = Path(path)
        split = path.name.removesuffix(_SPLIT_SUFFIX)
        if split in SPLITS and path.name == split_file_name(split):
            return cls(path.parent), split
        return None

    def split(self, name: str) -> Path:
        """The path of split `name` (train, val or test); it may not exist."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; one of {', '.join(SPLITS)}")
        return self.folder / split_file_name(name)

    def rows(self, name: str) -> Iterator[Example]:
        """The examples of split `name`, in file order."""
        return read_examples(self.split(name))

    @property
    def rejected(self) -> Path:
        return self.folder / REJECTED_FILE

    @property
    def is_prepare_output(self) -> bool:
        """True when `nerft data prepare` finished writing here (its stats.json is whole)."""
        stats = self._read_stats()
        return isinstance(stats, dict) and "totals" in stats and "splits" in stats

    @cached_property
    def stats(self) -> dict:
        """stats.json, or {} for a folder written by other means (tests, benches, by hand)."""
        stats = self._read_stats()
        return stats if isinstance(stats, dict) else {}

    @property
    def labels(self) -> tuple[str, ...] | None:
        """The label set in the order prepare recorded, or None when it recorded none."""
        labels = self.stats.get("labels")
        return tuple(labels) if isinstance(labels, list) and labels else None

    def guidelines(self, labels=None) -> dict[str, Guideline]:
        """The label guidelines `nerft data prepare --labels FILE` recorded ({} when none)."""
        found = self.stats.get("guidelines")
        if not found:
            return {}
        return parse_guidelines(found, f"{self.folder / STATS_FILE}: field guidelines", labels)

    def task_guidelines(self, setting, labels) -> dict[str, Guideline]:
        """The guidelines a run on this data writes into its instruction, as data.guidelines
        says: `off` none; `prepared` those recorded here; `preset` those laid over the preset
        ones of its corpus labels; `auto` the same, with the presets of the corpus formats
        measured to gain from them only (PRESETS_ON_BY_DEFAULT); a file (Path) or mapping laid
        over those recorded here."""
        labels = tuple(labels)
        if setting == "off":
            return {}
        found = {}
        if setting in ("preset", "auto"):
            found.update(preset_guidelines(self.stats.get("label_map") or [], labels,
                                           PRESETS_ON_BY_DEFAULT if setting == "auto" else None))
        found.update(self.guidelines(labels))
        if isinstance(setting, Path):
            found.update(read_guidelines(setting, labels))
        elif isinstance(setting, dict):
            found.update(parse_guidelines(setting, "data.guidelines", labels))
        elif setting not in GUIDELINE_SOURCES:
            raise ValueError(f"data.guidelines {setting!r}: one of {', '.join(GUIDELINE_SOURCES)}, "
                             "a file or a mapping")
        return {label: found[label] for label in labels if label in found}

    def sha256(self) -> dict[str, str]:
        """{split file name: sha256} of the split files present (what a run records)."""
        return {path.name: sha256_file(path) for path in map(self.split, SPLITS) if path.is_file()}

    def changed_split(self, recorded: dict[str, str], split: str = "train") -> bool:
        """True when split `split` differs from the hash in `recorded` (from `sha256()`)."""
        digest = recorded.get(split_file_name(split))
        return bool(digest) and self.split(split).is_file() and sha256_file(self.split(split)) != digest

    def _read_stats(self):
        try:
            return json.loads((self.folder / STATS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    # --- writing -------------------------------------------------------------------------

    @classmethod
    def check_target(cls, out: Path, force: bool) -> None:
        """Refuse an --out that cannot or should not receive the output, before any work."""
        out = Path(out)
        for parent in (out, *out.parents):
            if parent.exists() and not parent.is_dir():
                raise DataError(f"--out {out}: {parent} is a file, not a folder")
            if parent.exists():
                break
        if not out.is_dir() or force:
            return
        if cls(out).is_prepare_output:
            # Runs record the hashes of the splits they trained on and refuse to resume or
            # replay from changed files: replacing them is a decision, not a default.
            raise OutputTaken(f"--out {out} already holds a `nerft data prepare` output; runs "
                              "trained on it would no longer resume or replay from it; pass "
                              "--force to replace it (its other files are kept), or pick "
                              "another folder")
        if any(p for p in out.iterdir() if not p.name.endswith(".tmp")):
            raise OutputTaken(f"--out {out} is not empty and holds no earlier `nerft data "
                              "prepare` output; pick another folder, or pass --force to write "
                              "there (its other files are kept)")

    @classmethod
    def write(cls, out: Path, splits: dict[str, Iterable[dict]], rejected: Iterable[dict],
              stats: dict) -> "PreparedData":
        """Replace `out` with these splits, rejections and stats in one swap."""
        out = Path(out).resolve()
        staging, old = _beside(out, "partial"), _beside(out, "old")
        recover(out)
        shutil.rmtree(staging, ignore_errors=True)  # an unfinished build of a killed run
        staging.mkdir(parents=True)
        try:
            for name in SPLITS:
                write_jsonl(staging / split_file_name(name), splits.get(name, ()))
            write_jsonl(staging / REJECTED_FILE, rejected)
            _carry_over(out, staging)
            atomic.write_json(staging / STATS_FILE, stats)  # last: it marks the build finished
            atomic.replace_folder(out, staging, old)
        except BaseException:
            if not (staging / STATS_FILE).is_file():
                shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls(out)


def recover(out: Path) -> None:
    """Finish or undo a write into `out` that a kill interrupted."""
    out = Path(out)
    atomic.recover_folder(out, _beside(out, "partial"), _beside(out, "old"), STATS_FILE)


def _beside(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.{kind}"


def _carry_over(out: Path, staging: Path) -> None:
    """Copy what the user keeps in `out` into the new folder (hard links where possible), so
    that until the swap the originals stay where they were."""
    if not out.is_dir():
        return
    for entry in out.iterdir():
        if entry.name in OUTPUT_FILES or entry.name.endswith(".tmp"):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, staging / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, staging / entry.name)


def _link_or_copy(src, dst) -> None:
    if Path(src).is_symlink():
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
