"""Reading a corpus file as lines: decompressing by content, refusing archives, decoding each
line on its own (one bad byte costs one line), and the error for a whole unreadable input.
Shared by every reader (readers.py for the JSON formats, conll.py for tag-per-line files)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from nerft.errors import NerftError


class DataError(NerftError):
    """A problem with a whole input (unreadable, unknown format): always fatal."""


@dataclass
class TaggedLine:
    lineno: int
    text: str | None  # None when the bytes are not UTF-8
    error: str = ""


# Compressed inputs are read as they are; archives of several files must be unpacked.
_COMPRESSED = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))
_ARCHIVES = ((b"PK\x03\x04", "a zip archive"), (b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
             (b"Rar!", "a rar archive"))


# What a truncated or corrupt compressed file raises while it is read.
_READ_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error)


def open_bytes(path: Path) -> BinaryIO:
    """The file's bytes, decompressed when it is gzip/bz2/xz (told by content, not name)."""
    with open(path, "rb") as f:
        head = f.read(8)
    for magic, what in _ARCHIVES:
        if head.startswith(magic):
            raise DataError(f"{path}: {what}; unpack it and pass the corpus files inside")
    for magic, opener in _COMPRESSED:
        if head.startswith(magic):
            return opener(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def iter_lines(path: Path) -> Iterator[TaggedLine]:
    """Lines decoded one by one, so one bad byte costs one line, not the file."""
    with open_bytes(path) as f:
        try:
            for lineno, raw in enumerate(f, 1):
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]  # a UTF-8 byte-order mark is not part of the first row
                try:
                    yield TaggedLine(lineno, raw.decode("utf-8").rstrip("\r\n"))
                except UnicodeDecodeError as e:
                    yield TaggedLine(lineno, None, f"invalid UTF-8 at byte {e.start}")
        except _READ_ERRORS as e:  # a truncated or corrupt .gz
            raise DataError(f"{path}: cannot read: {e}") from None


def read_bytes(path: Path, size: int = -1) -> bytes:
    """The first `size` bytes (all: -1), decompressed; a truncated or corrupt .gz is fatal."""
    try:
        with open_bytes(path) as f:
            return f.read(size)
    except _READ_ERRORS as e:
        raise DataError(f"{path}: cannot read: {e}") from None


def example_id(file: str, lineno: int) -> str:
    """The id of the example that starts on `lineno` of `file`."""
    return f"{Path(file).stem}:{lineno}"
