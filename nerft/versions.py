"""The package versions nerft was tested with, checked once at start-up, and the provenance a
run records (package versions, git commit).

Older transformers releases do not fail on nerft's decoder calls: they swallow the `cache=`
keyword into `**kwargs` and decode with an empty cache. So a too-old install is refused with one
line rather than left to give wrong answers.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

MINIMUM = {"transformers": (5, 24), "torch": (2, 13), "peft": (0, 21), "accelerate": (1, 15)}


def _release(version: str) -> tuple[int, ...]:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version).release
    except InvalidVersion:
        return ()


def too_old() -> list[str]:
    """One line per installed package older than nerft needs."""
    found = []
    for name, least in MINIMUM.items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            found.append(f"{name} is not installed: pip install '{name}>={'.'.join(map(str, least))}'")
            continue
        if _release(have)[:len(least)] < least:
            found.append(f"{name} {have} is older than the {'.'.join(map(str, least))} nerft needs: "
                         f"pip install -U '{name}>={'.'.join(map(str, least))}'")
    return found


PACKAGES = ("nerft", "torch", "transformers", "peft", "accelerate", "datasets", "swanlab")


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
