"""Issue 27: `RunDir` (nerft/runs/run_dir.py) is the only code that spells a run folder's file
names. This reads the package's own source, so a module that builds `RUN / "metrics.jsonl"`
by hand fails here with the file and line to change."""

from source_scan import modules, string_constants

# Pieces of run-folder names: a string constant containing one (outside docstrings) is a
# file name built by hand.
RUN_NAME_PIECES = ("config.yaml", "run.json", "metrics.jsonl", "val_predictions.jsonl",
                   "summary.json", "scores.json", "checkpoint-", "eval-", "damaged-", ".best.",
                   ".final.", "swanlog")
# Whole constants that are run-folder names when they stand alone.
RUN_NAMES = ("best", "final", ".lock", ".staging", "tensorboard")
# (module, constant): where a name genuinely has to stay, and why.
ALLOWED = {
    # --help text telling the user where the report goes; builds no path.
    ("nerft/cli/eval.py", "Report folder (default: RUN/eval-SPLIT or eval/NAME)."),
    # A line of the model card telling its reader which record lacks an F1; builds no path.
    ("nerft/export/card.py", "- validation: scores.json without an F1"),
}


def test_no_run_file_name_is_spelled_outside_run_dir():
    found = []
    for rel, _, tree in modules():
        if rel == "nerft/runs/run_dir.py":
            continue
        for line, text in string_constants(tree):
            hit = text in RUN_NAMES or any(piece in text for piece in RUN_NAME_PIECES)
            if hit and (rel, text) not in ALLOWED:
                found.append(f"{rel}:{line}: {text!r}")
    assert not found, "run file names outside nerft/runs/run_dir.py (ask RunDir):\n" + "\n".join(found)
