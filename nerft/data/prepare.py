"""`nerft data prepare`: read corpora, clean, de-duplicate, split, write, and count everything.

Invariant, checked before anything is written: for every input file
rows read = kept + rejected (dropped) + duplicates removed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from nerft.cache import sha256_file
from nerft.data.clean import clean_example
from nerft.data.example import Example, Rejection
from nerft.data.guidelines import guidelines_record
from nerft.data.labels import LabelMapper
from nerft.data.prepared import PreparedData
from nerft.data.readers import DataError, read_file
from nerft.data.split import SPLITS, assign_splits, split_from_name
from nerft.data.stats import split_stats

_PRIORITY = {"test": 0, "val": 1, "train": 2, None: 3}
WARN_SHARE = 0.05  # a reason that drops more than this share of the rows read gets a warning


@dataclass
class FileCount:
    file: str
    format: str
    sha256: str
    declared_split: str | None
    read: int = 0
    kept: int = 0
    rejected: int = 0
    duplicates: int = 0
    repaired: int = 0


@dataclass
class Prepared:
    splits: dict[str, list[Example]]
    rejections: list[Rejection]
    files: list[FileCount]
    labels: list[str]
    split_policy: str
    duplicate_counts: Counter = field(default_factory=Counter)
    label_table: list[dict] = field(default_factory=list)
    unused_map_keys: list[str] = field(default_factory=list)


class PrepareFailed(DataError):
    """The inputs were read but the result is not worth writing (no rows, mostly rejected)."""

    exit_code = 1


def prepare(inputs: list[Path], *, fmt: str | None = None, user_label_map: dict[str, str] | None = None,
            ratios=(0.7, 0.15, 0.15), seed: int = 42, strict: bool = False,
            resplit: bool = False) -> Prepared:
    rejections: list[Rejection] = []
    files: list[FileCount] = []
    candidates: list[tuple[int, int, Example]] = []  # (file index, order, example)
    label_counts: dict[int, tuple[Counter, Counter]] = {}  # order -> (kept, dropped) by label
    mapper = LabelMapper(dict(user_label_map or {}))
    for fi, path in enumerate(inputs):
        path = Path(path)
        fmt_used, rows = read_file(path, fmt)
        count = FileCount(str(path), fmt_used, sha256_file(path), split_from_name(path))
        files.append(count)
        repaired_by_reader = False  # a reader's repair notes come just before their example
        for row in rows:
            if isinstance(row, Rejection):
                if row.action == "dropped":
                    count.read += 1
                    _drop(row, count, rejections, strict)
                else:
                    rejections.append(row)
                    repaired_by_reader = True
                continue
            count.read += 1
            cleaned = clean_example(row, fmt_used, mapper)
            for note in cleaned.notes:
                if note.action == "dropped":
                    _drop(note, count, rejections, strict)
                else:
                    rejections.append(note)
            if cleaned.example is not None:
                count.repaired += repaired_by_reader or bool(cleaned.notes)
                label_counts[len(candidates)] = (cleaned.kept, cleaned.dropped)
                candidates.append((fi, len(candidates), cleaned.example))
            repaired_by_reader = False

    declared = {f.declared_split for f in files}
    keep_file_splits = "train" in declared and not resplit
    # Where the same text appears twice, keep the copy from the most held-out split so that the
    # evaluation sets stay whole and training loses the leaking copy.
    if keep_file_splits:
        candidates.sort(key=lambda c: (_PRIORITY[files[c[0]].declared_split], c[1]))
    unique = _deduplicate(candidates, files, rejections)
    for fi, order, _ in unique:
        files[fi].kept += 1
        mapper_counts = label_counts[order]
        for key, n in mapper_counts[0].items():
            mapper.uses[key].kept += n
        for key, n in mapper_counts[1].items():
            mapper.uses[key].dropped += n
    _unique_ids(unique, files)

    reading_order = {id(ex): order for _, order, ex in unique}
    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    if keep_file_splits:
        policy, by_split = _keep_file_splits(unique, files, ratios, seed)
        splits.update(by_split)
    else:
        policy = "resplit: " + ("asked by --resplit" if resplit else
                                "no input declares a train split") + f", ratios {ratios}, seed {seed}"
        for (fi, order, ex), name in zip(unique, assign_splits(len(unique), ratios, seed)):
            splits[name].append(ex)
    for name in splits:
        splits[name].sort(key=lambda ex: reading_order[id(ex)])  # output in input order

    for f in files:
        if f.read != f.kept + f.rejected + f.duplicates:
            raise AssertionError(f"count mismatch for {f.file}: {f}")  # a bug, never bad input
    seen = {s.label for exs in splits.values() for ex in exs for s in ex.entities}
    label_order = mapper.order([f.format for f in files])
    labels = list(dict.fromkeys([l for l in label_order if l in seen] + sorted(seen)))
    dup_counts = Counter(r.reason for r in rejections if r.reason.endswith("duplicate"))
    return Prepared(splits, rejections, files, labels, policy, dup_counts, mapper.table(),
                    mapper.unused_keys())


def _unique_ids(unique, files) -> None:
    """Ids are `file-stem:line`; inputs with the same name (a/train.txt, b/train.txt) get the
    shortest path tail that tells them apart, and any id still taken (canonical files carry
    their own) gets a `~N` suffix."""
    paths = [Path(f.file) for f in files]
    tails = {}
    for i, p in enumerate(paths):
        parts = p.with_suffix("").parts if p.suffix else p.parts
        depth = 1
        while depth < len(parts) and any(
                j != i and Path(*paths[j].with_suffix("").parts[-depth:]) == Path(*parts[-depth:])
                for j in range(len(paths)) if paths[j].stem == p.stem):
            depth += 1
        tails[i] = "/".join(parts[-depth:])
    taken: set[str] = set()
    for fi, _, ex in unique:
        stem = paths[fi].stem
        if ex.id.startswith(stem + ":") and tails[fi] != stem:
            ex.id = tails[fi] + ex.id[len(stem):]
        if ex.id in taken:
            n = 2
            while f"{ex.id}~{n}" in taken:
                n += 1
            ex.id = f"{ex.id}~{n}"
        taken.add(ex.id)


def check_outcome(prep: Prepared) -> list[str]:
    """Warnings worth a visible line; raises PrepareFailed when nothing useful was kept."""
    totals = Counter()
    for f in prep.files:
        totals.update({"read": f.read, "kept": f.kept, "rejected": f.rejected})
    by_reason: dict[str, list[Rejection]] = {}
    for r in prep.rejections:
        if r.action == "dropped" and not r.reason.endswith("duplicate"):
            by_reason.setdefault(r.reason, []).append(r)
    top = sorted(by_reason.items(), key=lambda kv: -len(kv[1]))

    def examples(n: int) -> str:
        return "".join(f"\n  {reason}: {len(rs):,} rows, e.g. {_example_line(rs[0])}"
                       for reason, rs in top[:n])

    read, kept, rejected = totals["read"], totals["kept"], totals["rejected"]
    if kept == 0:
        raise PrepareFailed(f"no rows kept ({read:,} read, {rejected:,} rejected); nothing written"
                            + (examples(3) if top else "; the inputs hold no rows") +
                            "\n  check --format and the input files")
    if rejected * 2 > read:
        raise PrepareFailed(f"{rejected:,} of {read:,} rows rejected (more than half); nothing "
                            f"written; the main reasons:{examples(3)}\n  check --format and the "
                            "input files, or see them all with --strict")
    warnings = [f"{len(rs):,} of {read:,} rows ({len(rs) / read:.0%}) dropped as {reason}, "
                f"e.g. {_example_line(rs[0])}"
                for reason, rs in top if len(rs) > WARN_SHARE * read]
    warnings += _length_outliers(prep)
    if prep.unused_map_keys:
        warnings.append("--label-map names labels the inputs do not have: "
                        + ", ".join(prep.unused_map_keys))
    return warnings


def _example_line(r: Rejection) -> str:
    line = r.one_line()
    if r.raw is not None:
        line += f" | {r.raw[:80]!r}"
    return line


def _length_outliers(prep: Prepared) -> list[str]:
    """Rows far longer than the rest: a pasted document or a missing sentence break."""
    rows = [ex for exs in prep.splits.values() for ex in exs]
    lengths = sorted(len(ex.text) for ex in rows)
    if not lengths:
        return []
    median = lengths[len(lengths) // 2]
    limit = max(20 * median, 1000)
    long = sorted((ex for ex in rows if len(ex.text) > limit), key=lambda ex: -len(ex.text))
    if not long:
        return []
    rows_are = "1 row is" if len(long) == 1 else f"{len(long):,} rows are"
    return [f"{rows_are} far longer than the rest (over {limit:,} characters; median "
            f"{median:,}); the longest, {len(long[0].text):,} characters, is {long[0].origin}; "
            "training skips rows over its data.max_length tokens"]


def _drop(rej: Rejection, count: FileCount, rejections: list[Rejection], strict: bool) -> None:
    if strict:
        raise DataError(rej.one_line())
    count.rejected += 1
    rejections.append(rej)


def _is_correction(ex: Example) -> bool:
    # Rows that `nerft serve --feedback` wrote; the id prefix is the service's (serve/feedback.py).
    return ex.id.startswith("feedback-")


def _deduplicate(candidates, files, rejections):
    first: dict[str, Example] = {}
    where: dict[str, int] = {}  # text -> index in unique
    unique = []
    for fi, order, ex in candidates:
        kept = first.get(ex.text)
        if kept is None:
            first[ex.text] = ex
            where[ex.text] = len(unique)
            unique.append((fi, order, ex))
            continue
        if _is_correction(kept) and _is_correction(ex):
            # A later correction of the same sentence replaces the earlier one (the user changed
            # their mind); the earlier row is counted as a duplicate of its own file.
            old_fi = unique[where[ex.text]][0]
            first[ex.text] = ex
            unique[where[ex.text]] = (fi, order, ex)
            file, _, line = kept.origin.rpartition(":")
            rejections.append(Rejection(file, int(line) if line.isdigit() else 0,
                                        "superseded_duplicate", f"corrected again at {ex.origin}"))
            files[old_fi].duplicates += 1
            continue
        same = [(s.start, s.end, s.label) for s in kept.entities] == \
               [(s.start, s.end, s.label) for s in ex.entities]
        reason = "duplicate" if same else "conflicting_duplicate"
        file, _, line = ex.origin.rpartition(":")
        rejections.append(Rejection(file, int(line) if line.isdigit() else 0, reason,
                                    f"same text as {kept.origin}" +
                                    ("" if same else " but different entities")))
        files[fi].duplicates += 1
    return unique


def _keep_file_splits(unique, files, ratios, seed):
    by_split: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for fi, _, ex in unique:
        by_split[files[fi].declared_split or "train"].append(ex)
    missing = [s for s in ("val", "test") if not by_split[s]]
    if not missing:
        return "kept the inputs' own splits", by_split
    # Carve the missing splits out of train in the proportions the ratios give them.
    share = dict(zip(SPLITS, ratios))
    total = share["train"] + sum(share[m] for m in missing)
    local = tuple(share[s] / total if s == "train" or s in missing else 0.0 for s in SPLITS)
    train = by_split["train"]
    by_split["train"] = []
    for ex, name in zip(train, assign_splits(len(train), local, seed)):
        by_split[name].append(ex)
    return f"kept the inputs' own splits; {' and '.join(missing)} carved from train (seed {seed})", by_split


def write_prepared(prep: Prepared, out: Path, *, ratios, seed, guidelines: dict | None = None) -> dict:
    """Write the three splits, rejected.jsonl and stats.json into `out` as one swap; return
    the stats. A crash or kill leaves the previous folder (or none), never a mix of the two.
    `guidelines` ({label: Guideline}, from `--labels FILE`) go into stats.json, for training."""
    dropped = Counter(r.reason for r in prep.rejections
                      if r.action == "dropped" and not r.reason.endswith("duplicate"))
    repaired = Counter(r.reason for r in prep.rejections if r.action == "repaired")
    totals = {k: sum(getattr(f, k) for f in prep.files)
              for k in ("read", "kept", "rejected", "duplicates", "repaired")}
    stats = {
        "tool": "nerft data prepare",
        "inputs": [vars(f) for f in prep.files],
        "totals": totals,
        "dropped_by_reason": dict(dropped),
        "repaired_by_reason": dict(repaired),
        "duplicates_by_kind": dict(prep.duplicate_counts),
        "labels": prep.labels,
        "label_map": prep.label_table,
        **({"guidelines": guidelines_record(guidelines)} if guidelines else {}),
        "split_policy": prep.split_policy,
        "ratios": list(ratios),
        "seed": seed,
        "splits": {name: split_stats(exs, prep.labels) for name, exs in prep.splits.items()},
    }

    try:
        PreparedData.write(out, {name: (ex.to_dict() for ex in exs) for name, exs in prep.splits.items()},
                           (r.to_dict() for r in prep.rejections), stats)
    except OSError as e:  # no permission, disk full: the user's to fix
        raise DataError(f"--out {out}: cannot write: {e}") from None
    return stats
