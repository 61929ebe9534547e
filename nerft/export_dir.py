"""A `nerft export` folder: the one place that knows its file names.

An export holds either the trained adapter (`adapter/`, applied to the base model named in the
task record) or merged transformers weights in the folder itself; beside them the task record
(`task.json`: labels, prompt, answer format, stop tokens, written by `nerft.export.task_file`),
the model card (`README.md`), and for a GGUF export `model-TYPE.gguf` (merged) or `base-TYPE.gguf`
with the LoRA in `adapter-f16.gguf`, an Ollama `Modelfile` and the GBNF grammar `answer.gbnf`. Everything that writes or reads an export goes through
`ExportDir`; what the task record says belongs to the task's own code.

It sits low in the layers (only `nerft.atomic` and `nerft.errors` under it) so that the model
loader, serve and export can all use it.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nerft import atomic
from nerft.errors import NerftError

ADAPTER_FOLDER = "adapter"
TASK_FILE = "task.json"
# Merged exports made before the task record named its answer format carried the format (and a
# copy of the labels) in a second file; it is still read, never written.
OLDER_RECORD = "nerft.json"
CARD_FILE = "README.md"
MODELFILE = "Modelfile"
GRAMMAR_FILE = "answer.gbnf"


class ExportDirError(NerftError):
    """An export folder that cannot be written or read as one: one line naming the file."""


@dataclass(frozen=True)
class ExportDir:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def holds_export(cls, path: Path) -> bool:
        """True when `path` is a folder `nerft export` wrote (it has a task record)."""
        return (Path(path) / TASK_FILE).is_file()

    adapter = property(lambda self: self.path / ADAPTER_FOLDER)
    task_file = property(lambda self: self.path / TASK_FILE)
    card = property(lambda self: self.path / CARD_FILE)
    modelfile = property(lambda self: self.path / MODELFILE)
    grammar = property(lambda self: self.path / GRAMMAR_FILE)

    @property
    def has_adapter(self) -> bool:
        return self.adapter.is_dir()

    def gguf(self, outtype: str) -> Path:
        """The merged model as one GGUF."""
        return self.path / f"model-{outtype}.gguf"

    def base_gguf(self, outtype: str) -> Path:
        """The base model's GGUF, which the adapter GGUF applies to."""
        return self.path / f"base-{outtype}.gguf"

    def adapter_gguf(self, outtype: str) -> Path:
        """The LoRA adapter as a GGUF (llama.cpp `--lora`, Ollama `ADAPTER`)."""
        return self.path / f"adapter-{outtype}.gguf"

    def files(self) -> list[str]:
        """Every file of the export, relative to it, sorted."""
        return sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())

    # --- reading -------------------------------------------------------------------------

    def read_task(self) -> dict:
        """The task record as a JSON object; an older merged export's answer format (kept in a
        second file) is filled in where the record does not name one."""
        record = _read_object(self.task_file)
        older = self.path / OLDER_RECORD
        if not isinstance(record.get("answer_format"), str) and older.is_file():
            name = _read_object(older).get("answer_format")
            if isinstance(name, str):
                record = {**record, "answer_format": name}
        return record

    # --- writing -------------------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def create(cls, out: Path) -> Iterator["ExportDir"]:
        """Build an export in a folder beside `out`, renamed to `out` only when the body returns,
        so a failed export never leaves a folder that looks usable. `out` must not exist or be
        an empty folder."""
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ExportDirError(f"{out} already exists and is not empty; choose another --out")
        with atomic.staged_folder(out) as tmp:
            yield cls(tmp)
            _make_readable(tmp)

    def write_task(self, record: dict) -> Path:
        atomic.write_json(self.task_file, record)
        return self.task_file

    def write_card(self, text: str) -> Path:
        atomic.write_text(self.card, text)
        return self.card

    def write_modelfile(self, text: str) -> Path:
        atomic.write_text(self.modelfile, text)
        return self.modelfile

    def write_grammar(self, text: str) -> Path:
        atomic.write_text(self.grammar, text)
        return self.grammar

    def copy_adapter(self, weights: Path, skip: tuple[str, ...] = ()) -> list[str]:
        """Copy the adapter files of `weights` byte for byte into `adapter/`; returns their names.

        Only regular files are copied: a symbolic link in a run could point anywhere on the
        machine, and an export is a folder made for sharing."""
        weights = Path(weights)
        for root, dirs, files in os.walk(weights):
            for name in dirs + files:
                entry = Path(root) / name
                if entry.is_symlink():
                    raise ExportDirError(
                        f"{entry} is a symbolic link (to {os.readlink(entry)}); nerft export copies "
                        "only regular files out of a run, so replace it with the file itself")
        shutil.copytree(weights, self.adapter, symlinks=True,
                        ignore=shutil.ignore_patterns(*skip, "*.tmp"))
        copied = []
        for source in sorted(p for p in weights.iterdir() if p.is_file() and (self.adapter / p.name).exists()):
            if not filecmp.cmp(source, self.adapter / source.name, shallow=False):
                raise ExportDirError(f"{self.adapter / source.name}: copy differs from {source}")
            copied.append(source.name)
        return copied


def _read_object(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportDirError(f"{path}: cannot read ({e})".splitlines()[0]) from None
    if not isinstance(record, dict):
        raise ExportDirError(f"{path}: expected a JSON object")
    return record


def _make_readable(folder: Path) -> None:
    """Staging folders (and some writers) make private files; an export is for sharing. Links
    are never followed (a chmod through one would change a file outside the export)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
