"""`ExportDir`: the one owner of an export folder's file names, reading and staging."""

import json

import pytest

from nerft.export_dir import ExportDir, ExportDirError


def test_an_older_merged_export_keeps_its_answer_format(tmp_path):
    # Merged exports made before task.json named the format carried it in nerft.json too.
    (tmp_path / "task.json").write_text(json.dumps({"labels": ["人名"], "answer_format": {"kind": "json-lines"}}),
                                        encoding="utf-8")
    (tmp_path / "nerft.json").write_text(json.dumps({"labels": ["人名"], "answer_format": "compact"}),
                                         encoding="utf-8")
    assert ExportDir.holds_export(tmp_path)
    assert ExportDir(tmp_path).read_task() == {"labels": ["人名"], "answer_format": "compact"}
    (tmp_path / "nerft.json").unlink()
    assert ExportDir(tmp_path).read_task()["answer_format"] == {"kind": "json-lines"}


def test_a_broken_task_record_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "task.json").write_bytes(b"\xff{")
    with pytest.raises(ExportDirError, match=f"^{tmp_path / 'task.json'}: cannot read"):
        ExportDir(tmp_path).read_task()
    (tmp_path / "task.json").write_text("[1]", encoding="utf-8")
    with pytest.raises(ExportDirError, match="expected a JSON object"):
        ExportDir(tmp_path).read_task()


def test_a_failed_build_leaves_nothing_and_a_finished_one_is_shared(tmp_path):
    out = tmp_path / "export"
    with pytest.raises(RuntimeError):
        with ExportDir.create(out) as export:
            export.write_task({"labels": ["人名"]})
            raise RuntimeError("the self-check failed")
    assert list(tmp_path.iterdir()) == []
    with ExportDir.create(out) as export:
        export.write_card("# card\n")
    assert ExportDir(out).files() == ["README.md"]
    assert (out / "README.md").stat().st_mode & 0o044 == 0o044  # readable by others
    with pytest.raises(ExportDirError, match="already exists and is not empty"):
        with ExportDir.create(out):
            pass
