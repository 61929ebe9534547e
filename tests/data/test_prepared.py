"""`PreparedData`: the one reader and writer of a `nerft data prepare` folder."""

import hashlib

import pytest

from corpus_fixtures import RESUME
from nerft.data.prepare import prepare, write_prepared
from nerft.data.prepared import NotPreparedData, PreparedData


@pytest.fixture
def prepared(tmp_path, resume_file):
    out = tmp_path / "data"
    stats = write_prepared(prepare([resume_file]), out, ratios=(0.7, 0.15, 0.15), seed=42)
    return PreparedData.open(out), stats


def test_reads_back_what_prepare_wrote(prepared):
    data, stats = prepared
    assert data.is_prepare_output and data.stats == stats
    assert data.labels == tuple(stats["labels"]) and data.labels
    texts = sorted(ex.text for split in ("train", "val", "test") for ex in data.rows(split))
    assert texts == sorted(t for t, _ in RESUME)
    assert data.sha256() == {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                             for p in map(data.split, ("train", "val", "test"))}
    assert PreparedData.of_split_file(data.split("val")) == (data, "val")
    assert PreparedData.of_split_file(data.folder / "predictions.jsonl") is None


def test_a_changed_split_is_told_from_the_recorded_hash(prepared):
    data, _ = prepared
    recorded = data.sha256()
    assert not data.changed_split(recorded)
    data.split("train").write_text("", encoding="utf-8")
    assert data.changed_split(recorded) and not data.changed_split(recorded, "val")


def test_a_folder_that_is_not_prepared_data_is_named(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    with pytest.raises(NotPreparedData, match=f"{folder / 'train.jsonl'} not found; run "
                                              f"`nerft data prepare ... --out {folder}` first"):
        PreparedData.open(folder)
    assert PreparedData(folder).labels is None and PreparedData(folder).stats == {}
    assert not PreparedData(folder).is_prepare_output
