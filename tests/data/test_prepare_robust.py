"""`nerft data prepare` on awkward inputs: nothing is lost with exit code 0, no output is left
half-written, and every message is one readable line."""

import bz2
import gzip
import json
import shutil
import subprocess
import sys

import pytest

from corpus_fixtures import RESUME, WEIBO, ccfbdci_line, conll_text, read_jsonl, stats_of
from nerft.data.prepared import OUTPUT_FILES
from nerft.data.prepare import prepare, write_prepared


def totals(out):
    t = stats_of(out)["totals"]
    assert t["read"] == t["kept"] + t["rejected"] + t["duplicates"]
    return t["read"], t["kept"], t["rejected"], t["duplicates"]


def all_texts(out):
    return [r["text"] for name in ("train", "val", "test") for r in read_jsonl(out / f"{name}.jsonl")]


def one_line(stderr):
    return " ".join(stderr.split())


# --- item 4: whitespace in CoNLL columns -------------------------------------------------------

def test_trailing_space_after_conll_tags_loses_nothing(cli, tmp_path):
    lines = conll_text(RESUME, "BMES").splitlines()
    path = tmp_path / "resume.bmes"
    # Some lines end in a space or a tab, as editors and exporters leave them.
    path.write_text("\n".join(l + (" " if i % 3 == 0 else "\t" if i % 7 == 0 else "") if l else l
                              for i, l in enumerate(lines)) + "\n", encoding="utf-8")
    res = cli("data", "prepare", path, "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert totals(tmp_path / "o") == (len(RESUME), len(RESUME), 0, 0)
    assert sorted(all_texts(tmp_path / "o")) == sorted(t for t, _ in RESUME)


def test_space_before_the_tab_is_not_text(tmp_path):
    path = tmp_path / "w.bio"
    path.write_text(conll_text(WEIBO, "BIO", " \t"), encoding="utf-8")
    prep = prepare([path], ratios=(1.0, 0.0, 0.0))
    assert [ex.text for ex in prep.splits["train"]] == [t for t, _ in WEIBO]
    assert sum(len(ex.entities) for ex in prep.splits["train"]) == sum(len(s) for _, s in WEIBO)


def test_a_space_character_is_still_a_character(tmp_path):
    path = tmp_path / "s.bio"
    path.write_text("A B-ORG\n  I-ORG\nB I-ORG\n\n", encoding="utf-8")  # "A B" is one entity
    (ex,) = prepare([path], ratios=(1.0, 0.0, 0.0)).splits["train"]
    assert ex.text == "A B" and [(s.start, s.end) for s in ex.entities] == [(0, 3)]


# --- item 5: nothing kept, or most rows rejected, is an error ---------------------------------

def test_empty_file_is_an_error_and_writes_nothing(cli, tmp_path):
    path = tmp_path / "empty.bio"
    path.write_text("", encoding="utf-8")
    res = cli("data", "prepare", path, "--format", "conll", "--out", tmp_path / "o")
    assert res.exit_code == 1
    assert "no rows kept (0 read, 0 rejected)" in one_line(res.stderr)
    assert not (tmp_path / "o").exists()


def test_wrong_format_is_an_error_with_reasons_and_an_example(cli, tmp_path):
    path = tmp_path / "w.bio"
    path.write_text(conll_text(WEIBO), encoding="utf-8")
    res = cli("data", "prepare", path, "--format", "ccfbdci", "--out", tmp_path / "o")
    assert res.exit_code == 1
    msg = one_line(res.stderr)
    n_lines = sum(len(t) + 1 for t, _ in WEIBO) - len(WEIBO)  # blank lines are skipped
    assert f"no rows kept ({n_lines} read, {n_lines} rejected)" in msg
    assert f"malformed_json: {n_lines} rows, e.g. {path}:1: malformed_json" in msg
    assert "'我 O'" in msg  # the example shows the line itself


def test_majority_rejected_is_an_error_with_top_reasons(cli, tmp_path):
    path = tmp_path / "mostly_bad.jsonl"
    good = [ccfbdci_line(t, []) for t in ("甲来了", "乙来了", "丙来了")]
    bad = ['{"text": "丁来了", "entities": [}'] * 2 + [ccfbdci_line("戊来了", [(0, 9, "PER")])] * 3
    bad[2:] = [ccfbdci_line(f"戊{i}来了", [(0, 9, "PER")]) for i in range(3)]
    path.write_text("\n".join(good + bad) + "\n", encoding="utf-8")
    res = cli("data", "prepare", path, "--out", tmp_path / "o")
    assert res.exit_code == 1
    msg = one_line(res.stderr)
    assert "5 of 8 rows rejected (more than half)" in msg
    assert msg.index("span_out_of_range: 3 rows") < msg.index("malformed_json: 2 rows")
    assert f"{path}:6: span_out_of_range" in msg and f"{path}:4: malformed_json" in msg
    assert not (tmp_path / "o").exists()


def test_a_reason_above_5_percent_is_a_warning_and_strict_still_exits_2(cli, tmp_path):
    sentences = [(f"句子{i}号", []) for i in range(18)]
    path = tmp_path / "c.bio"
    path.write_text(conll_text(sentences) + "坏 X-PER\n\n好 Q\n\n", encoding="utf-8")
    res = cli("data", "prepare", path, "--out", tmp_path / "o")
    assert res.exit_code == 0
    assert totals(tmp_path / "o") == (20, 18, 2, 0)
    assert "warning: 2 of 20 rows (10%) dropped as unknown_tag" in one_line(res.stderr)
    res = cli("data", "prepare", path, "--out", tmp_path / "o2", "--strict")
    first_bad = len(conll_text(sentences).splitlines()) + 1
    assert res.exit_code == 2 and f"{path}:{first_bad}: unknown_tag" in one_line(res.stderr)
    # Below the share: no warning.
    path.write_text(conll_text(sentences * 2) + "坏 X-PER\n\n", encoding="utf-8")
    res = cli("data", "prepare", path, "--out", tmp_path / "o3")
    assert res.exit_code == 0 and "warning" not in res.stderr


# --- item 6: byte-order mark, compressed inputs -----------------------------------------------

def test_utf8_bom_is_not_part_of_the_first_row(tmp_path):
    js = tmp_path / "bom.jsonl"
    js.write_bytes(b"\xef\xbb\xbf" + "\n".join(ccfbdci_line(t, s) for t, s in RESUME).encode())
    prep = prepare([js], ratios=(1.0, 0.0, 0.0))
    assert (prep.files[0].read, prep.files[0].kept, prep.files[0].rejected) == (10, 10, 0)
    conll = tmp_path / "bom.bio"
    conll.write_bytes(b"\xef\xbb\xbf" + conll_text(WEIBO).encode())
    prep = prepare([conll], ratios=(1.0, 0.0, 0.0))
    assert prep.splits["train"][0].text == WEIBO[0][0]  # no \ufeff inside the text


@pytest.mark.parametrize("compress, suffix", [(gzip.compress, ".gz"), (bz2.compress, ".bz2")])
def test_compressed_inputs_are_read(cli, tmp_path, compress, suffix):
    path = tmp_path / f"resume.bmes{suffix}"
    path.write_bytes(compress(conll_text(RESUME, "BMES").encode()))
    res = cli("data", "prepare", path, "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert totals(tmp_path / "o") == (len(RESUME), len(RESUME), 0, 0)


def test_zip_archive_is_a_clear_error(cli, tmp_path):
    import zipfile

    path = tmp_path / "corpus.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("train.bio", conll_text(WEIBO))
    res = cli("data", "prepare", path, "--out", tmp_path / "o")
    assert res.exit_code == 2
    assert f"{path}: a zip archive; unpack it" in one_line(res.stderr)


# --- item 7: the output folder ----------------------------------------------------------------

@pytest.fixture
def weibo_prepared(weibo_file):
    return prepare([weibo_file], ratios=(0.5, 0.25, 0.25))


def test_a_failure_while_writing_leaves_the_previous_output_whole(tmp_path, weibo_prepared,
                                                                  resume_file, monkeypatch):
    out = tmp_path / "o"
    write_prepared(weibo_prepared, out, ratios=(0.5, 0.25, 0.25), seed=42)
    before = {name: (out / name).read_bytes() for name in OUTPUT_FILES}
    import nerft.data.prepared as prep_mod

    real = prep_mod.write_jsonl

    def dies_at_test(path, rows):
        if path.name == "test.jsonl":
            raise KeyboardInterrupt  # as a Ctrl-C midway would
        return real(path, rows)

    monkeypatch.setattr(prep_mod, "write_jsonl", dies_at_test)
    with pytest.raises(KeyboardInterrupt):
        write_prepared(prepare([resume_file]), out, ratios=(0.7, 0.15, 0.15), seed=42)
    assert {name: (out / name).read_bytes() for name in OUTPUT_FILES} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "resume.char.bmes", "weibo.bio"]


@pytest.mark.parametrize("name", ["o", "o[1]"])  # glob characters in the folder name
def test_a_killed_swap_is_recovered_by_the_next_run(tmp_path, weibo_prepared, resume_file, name):
    from nerft.data.prepared import recover

    out = tmp_path / name
    write_prepared(weibo_prepared, out, ratios=(0.5, 0.25, 0.25), seed=42)
    (out / "notes.md").write_text("mine", encoding="utf-8")
    before = (out / "train.jsonl").read_bytes()
    # Killed while building: the half-built folder beside it is dropped, the output stays.
    (tmp_path / f".{name}.partial").mkdir()
    (tmp_path / f".{name}.partial" / "train.jsonl").write_text("half", encoding="utf-8")
    write_prepared(prepare([resume_file]), out, ratios=(0.7, 0.15, 0.15), seed=42)
    assert sorted(all_texts(out)) == sorted(t for t, _ in RESUME)
    assert (out / "notes.md").read_text(encoding="utf-8") == "mine" and is_whole(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "resume.char.bmes", "weibo.bio"])
    # Killed between the two renames of a finished build: the new folder is swapped in.
    after = (out / "train.jsonl").read_bytes()
    shutil.copytree(out, tmp_path / f".{name}.partial")
    out.rename(tmp_path / f".{name}.old")
    recover(out)
    assert (out / "train.jsonl").read_bytes() == after and is_whole(out)
    assert (out / "notes.md").read_text(encoding="utf-8") == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "resume.char.bmes", "weibo.bio"])
    # Killed after moving the old folder aside, before the build finished: the old one returns.
    (tmp_path / f".{name}.partial").mkdir()
    out.rename(tmp_path / f".{name}.old")
    recover(out)
    assert (out / "train.jsonl").read_bytes() == after and before != after


def is_whole(out):
    return all((out / name).is_file() for name in OUTPUT_FILES)


def test_re_preparing_replaces_the_outputs_and_keeps_other_files(cli, tmp_path, weibo_file, resume_file):
    out = tmp_path / "o"
    assert cli("data", "prepare", weibo_file, "--out", out).exit_code == 0
    (out / "notes.md").write_text("mine", encoding="utf-8")
    res = cli("data", "prepare", resume_file, "--out", out, "--force")
    assert res.exit_code == 0, res.output
    assert sorted(all_texts(out)) == sorted(t for t, _ in RESUME)  # nothing of the old run left
    assert (out / "notes.md").read_text(encoding="utf-8") == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "resume.char.bmes", "weibo.bio"]


def test_an_earlier_prepare_output_is_not_replaced_without_force(cli, tmp_path, weibo_file, resume_file):
    """Issue 28 item 15: runs record the hashes of the splits they trained on, so replacing
    them silently breaks their resume; it takes --force, as a foreign folder does."""
    out = tmp_path / "o"
    assert cli("data", "prepare", weibo_file, "--out", out).exit_code == 0
    before = {name: (out / name).read_bytes() for name in OUTPUT_FILES}
    res = cli("data", "prepare", resume_file, "--out", out)
    assert res.exit_code == 2
    message = one_line(res.stderr)
    assert f"--out {out} already holds a `nerft data prepare` output" in message
    assert "pass --force to replace it" in message and "Traceback" not in res.output
    assert {name: (out / name).read_bytes() for name in OUTPUT_FILES} == before


def test_a_foreign_folder_needs_force_and_keeps_its_files(cli, tmp_path, weibo_file):
    out = tmp_path / "project"
    out.mkdir()
    (out / "paper.tex").write_text("draft", encoding="utf-8")
    res = cli("data", "prepare", weibo_file, "--out", out)
    assert res.exit_code == 2
    assert "is not empty and holds no earlier `nerft data prepare` output" in one_line(res.stderr)
    assert sorted(p.name for p in out.iterdir()) == ["paper.tex"]
    res = cli("data", "prepare", weibo_file, "--out", out, "--force")
    assert res.exit_code == 0, res.output
    assert (out / "paper.tex").read_text(encoding="utf-8") == "draft" and is_whole(out)


def test_out_that_is_a_file_is_one_line(cli, tmp_path, weibo_file):
    target = tmp_path / "train.jsonl"
    target.write_text("keep me", encoding="utf-8")
    for out in (target, target / "sub"):
        res = cli("data", "prepare", weibo_file, "--out", out)
        assert res.exit_code == 2
        assert res.stderr.strip().count("\n") == 0
        assert f"{target} is a file, not a folder" in res.stderr
    assert target.read_text(encoding="utf-8") == "keep me"


# --- item 8: smaller ones --------------------------------------------------------------------

def test_inputs_with_the_same_name_get_distinct_ids(cli, tmp_path):
    for sub, corpus in (("a", RESUME), ("b", WEIBO)):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "train.bio").write_text(conll_text(corpus), encoding="utf-8")
    out = tmp_path / "o"
    res = cli("data", "prepare", tmp_path / "a" / "train.bio", tmp_path / "b" / "train.bio",
              "--out", out, "--resplit")
    assert res.exit_code == 0, res.output
    ids = [r["id"] for name in ("train", "val", "test") for r in read_jsonl(out / f"{name}.jsonl")]
    assert len(ids) == len(RESUME) + len(WEIBO) == len(set(ids))
    assert {"a/train:1", "b/train:1"} <= set(ids)


def test_canonical_files_with_clashing_ids_get_distinct_ids(tmp_path):
    rows = [json.dumps({"id": "0", "text": t, "entities": []}, ensure_ascii=False)
            for t in ("甲", "乙")]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    prep = prepare([path], fmt="canonical", ratios=(1.0, 0.0, 0.0))
    assert [ex.id for ex in prep.splits["train"]] == ["0", "0~2"]


@pytest.mark.parametrize("spec", ["nan,0,1", "inf,0,0", "0.5,nan,0.5"])
def test_non_numbers_in_split_are_a_clean_message(cli, tmp_path, weibo_file, spec):
    res = cli("data", "prepare", weibo_file, "--out", tmp_path / "o", "--split", spec)
    assert res.exit_code == 2
    assert f"--split '{spec}': expected three non-negative numbers summing to 1" in one_line(res.stderr)


def test_markup_in_paths_and_data_is_printed_as_is(cli, tmp_path):
    folder = tmp_path / "[bold]x["  # the path reads .../[bold]x[/url].bio
    folder.mkdir()
    path = folder / "url].bio"
    path.write_text(conll_text(WEIBO * 3) + "网 B-[/url]\n址 I-[/url]\n\n[ X-[/url]\n\n",
                    encoding="utf-8")
    res = cli("data", "prepare", path, "--out", tmp_path / "o", "--strict")
    assert res.exit_code == 2, res.output
    assert f"{path}:" in one_line(res.stderr) and "X-[/url]" in res.stderr
    assert res.exception is None or isinstance(res.exception, SystemExit)
    res = cli("data", "prepare", path, "--out", tmp_path / "o")  # the summary names the file
    assert res.exit_code == 0, res.output
    assert "url].bio" in res.stdout and "[/url]" in res.stdout  # a label, in the tables


def test_a_folder_as_input_says_so(cli, tmp_path, weibo_file):
    res = cli("data", "prepare", tmp_path, "--out", tmp_path / "o")
    assert res.exit_code == 2
    assert f"{tmp_path}: is a folder; pass the corpus files inside it (it holds weibo.bio)" \
        in one_line(res.stderr)


def test_an_outlier_length_row_is_a_warning(cli, tmp_path):
    path = tmp_path / "long.jsonl"
    rows = [ccfbdci_line(t, s) for t, s in RESUME * 1] + [ccfbdci_line("长" * 200_000, [])]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    res = cli("data", "prepare", path, "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    msg = one_line(res.stderr)
    assert "warning: 1 row is far longer than the rest" in msg
    assert f"200,000 characters, is {path}:11" in msg
    res = cli("data", "prepare", path.with_name("short.jsonl"), "--out", tmp_path / "o2")
    assert "far longer" not in res.stderr


def test_cli_subprocess_has_no_traceback_for_bad_split(tmp_path, weibo_file):
    # The same through `python -m nerft`, as users run it.
    res = subprocess.run([sys.executable, "-m", "nerft", "data", "prepare", str(weibo_file),
                          "--out", str(tmp_path / "o"), "--split", "nan,0,1"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "expected three non-negative numbers summing to 1" in res.stderr
    assert "NaN" not in res.stderr


def test_a_truncated_gz_is_one_line(cli, tmp_path):
    path = tmp_path / "resume.bmes.gz"
    path.write_bytes(gzip.compress(conll_text(RESUME * 50, "BMES").encode())[:400])
    res = cli("data", "prepare", path, "--out", tmp_path / "o")
    assert res.exit_code == 2
    assert f"{path}: cannot read:" in one_line(res.stderr) and "Traceback" not in res.output


@pytest.mark.parametrize("where", [12, 400])  # in the first lines (format detection) or later
def test_a_corrupt_gz_is_one_line(cli, tmp_path, where):
    """Issue 28 item 12: a flipped byte in the deflate stream raised zlib.error, a traceback."""
    path = tmp_path / "resume.bmes.gz"
    data = bytearray(gzip.compress(conll_text(RESUME * 50, "BMES").encode()))
    data[where:where + 8] = bytes(b ^ 0xFF for b in data[where:where + 8])
    path.write_bytes(bytes(data))
    res = cli("data", "prepare", path, "--out", tmp_path / "o")
    assert res.exit_code == 2, res.output
    assert f"{path}: cannot read:" in one_line(res.stderr) and "Traceback" not in res.output
    assert res.stderr.strip().count("\n") == 0 and not (tmp_path / "o").exists()


KILLED_WRITER = """
import sys, time
import nerft.data.prepare as p
import nerft.data.prepared as prepared
real = prepared.write_jsonl
def slow(path, rows):
    if path.name == "test.jsonl":
        print("ready", flush=True)
        time.sleep(60)
    return real(path, rows)
prepared.write_jsonl = slow
prep = p.prepare([sys.argv[1]])
p.write_prepared(prep, sys.argv[2], ratios=(0.7, 0.15, 0.15), seed=42)
"""


def test_kill_9_while_writing_keeps_the_old_output_and_the_next_run_tidies_up(
        cli, tmp_path, weibo_file, resume_file):
    out = tmp_path / "o"
    assert cli("data", "prepare", weibo_file, "--out", out).exit_code == 0
    before = {name: (out / name).read_bytes() for name in OUTPUT_FILES}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(resume_file), str(out)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"  # train.jsonl and val.jsonl written
    finally:
        proc.kill()
        proc.wait()
    assert {name: (out / name).read_bytes() for name in OUTPUT_FILES} == before
    assert (tmp_path / ".o.partial").is_dir()  # the half-built folder, beside
    res = cli("data", "prepare", resume_file, "--out", out, "--force")
    assert res.exit_code == 0, res.output
    assert sorted(all_texts(out)) == sorted(t for t, _ in RESUME)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "resume.char.bmes", "weibo.bio"]
