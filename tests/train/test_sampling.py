import pytest

from nerft.data.example import Example, Span
from nerft.train.sampling import cap_empty_share


def rows(full, empty):
    out = [Example(f"f{i}", "张三来了。", [Span(0, 2, "人名", "张三")]) for i in range(full)]
    out += [Example(f"e{i}", "今天下雨。", []) for i in range(empty)]
    return out


def test_entity_free_rows_are_capped_and_every_entity_row_kept():
    kept, report = cap_empty_share(rows(20, 80), 0.5, seed=1)
    assert sum(1 for ex in kept if ex.entities) == 20
    assert sum(1 for ex in kept if not ex.entities) == 20 == report.empty_kept
    assert report.empty_before == 80
    assert cap_empty_share(rows(20, 80), 0.5, seed=1)[0] == kept  # seeded
    assert cap_empty_share(rows(20, 80), 0.5, seed=2)[0] != kept
    assert cap_empty_share(rows(20, 80), None, seed=1)[0] == rows(20, 80)
    assert [ex for ex in cap_empty_share(rows(20, 80), 0.0, seed=1)[0]] == rows(20, 0)


def test_training_on_rows_without_any_entity_says_why_it_has_nothing(tmp_path, tiny_model_dir):
    from nerft.config import Config
    from nerft.data.example import write_jsonl
    from nerft.train.workflow import TrainError, train

    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", (ex.to_dict() for ex in rows(0, 6)))
    write_jsonl(data / "val.jsonl", (ex.to_dict() for ex in rows(2, 0)))
    config = Config.model_validate({"data": {"dir": str(data)}, "model": {"source": str(tiny_model_dir)},
                                    "training": {"output_dir": str(tmp_path / "run")},
                                    "tracking": {"swanlab": "off"}})
    with pytest.raises(TrainError, match="no training row has an entity.*max_empty_share=null"):
        train(config)
    assert not (tmp_path / "run" / "run.json").exists()  # nothing half-written
