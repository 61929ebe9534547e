"""The model cache's `build_atomically`, now a thin use of `nerft.atomic.staged_folder`: a
finished entry has its marker, a failed build leaves nothing, a race keeps the winner."""

import pytest

from nerft.cache import COMPLETE_MARKER, build_atomically, is_complete


def test_a_finished_build_is_marked_and_a_failed_one_leaves_nothing(tmp_path):
    final = tmp_path / "entry"
    with pytest.raises(RuntimeError):
        with build_atomically(final) as tmp:
            (tmp / "weights").write_text("half", encoding="utf-8")
            raise RuntimeError("killed by the user")
    assert list(tmp_path.iterdir()) == []
    with build_atomically(final) as tmp:
        (tmp / "weights").write_text("whole", encoding="utf-8")
    assert is_complete(final) and (final / "weights").read_text(encoding="utf-8") == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]


def test_an_unfinished_entry_is_replaced_and_a_finished_twin_is_kept(tmp_path):
    final = tmp_path / "entry"
    final.mkdir()
    (final / "weights").write_text("from an interrupted older layout", encoding="utf-8")
    with build_atomically(final) as tmp:
        (tmp / "weights").write_text("new", encoding="utf-8")
    assert (final / "weights").read_text(encoding="utf-8") == "new" and is_complete(final)

    other = tmp_path / "raced"
    with build_atomically(other) as tmp:
        (tmp / "weights").write_text("ours", encoding="utf-8")
        other.mkdir()  # another process finished first while we were converting
        (other / "weights").write_text("theirs", encoding="utf-8")
        (other / COMPLETE_MARKER).write_text("ok\n", encoding="utf-8")
    assert (other / "weights").read_text(encoding="utf-8") == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry", "raced"]
