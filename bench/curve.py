"""Learning curve: test F1 of a recipe after N training sentences, per corpus.

    python -m bench.curve                                    # 4 corpora x 160/640/2560 (hours on CPU)
    python -m bench.curve --corpus msra-sparse cluener-rare --sizes 160 --test 100
    python -m bench.curve --corpus ccfbdci --sizes 160 640 --name curve-ccfbdci
    python -m bench.curve --corpus msra --sizes 640 --test 100 --resume   # add points to curve.json
    python -m bench.curve --combine curve curve-2560-lr2e-4 --name curve-auto   # one table, trains nothing
    python -m bench.curve --corpus ccfbdci --sizes 160 --test 100 --set method.head=tagger --name curve-tagger

For each corpus: `nerft data prepare` on its files from $NERFT_DATA (into --work, never into the
repository), a fixed test slice (the first --test rows of test.jsonl after a seeded shuffle), the untrained model's
strict micro F1 on it (size 0: zero-shot), then for each size one `nerft train` with the recipe
(--config, default configs/demo-cpu.yaml; data.train_limit=SIZE, one epoch) and the F1 of its
best/ adapter on the same slice (with `--set method.head=tagger` there is no zero-shot point: an
untrained tagging head tags at random). Each point also records the training rate `nerft train`
printed last (samples_per_s) and the test sentences decoded per second. Writes bench/results/<name>.json, .md and .png (F1 against
training sentences, one line per corpus) and prints the table.

Sparse corpora (most sentences without any entity, as on social media) are built from the shared
ones, because no such corpus is in $NERFT_DATA:
- msra-sparse: MSRA with sentences that hold entities left out at random (seeded) until 75%
  of every split has none (the corpus itself has 41%);
- cluener-rare: CLUENER keeping only its three rarest labels (book, movie, scene); the other
  labels are dropped (`--label-map X=-`: their entities leave the row, the row stays), so most
  sentences hold none of them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from nerft.config import is_tagger

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("NERFT_DATA", REPO.parent / "shared" / "data"))


@dataclass(frozen=True)
class Corpus:
    name: str
    files: tuple[str, ...]  # relative to $NERFT_DATA
    label_map: dict[str, str] = field(default_factory=dict)
    entity_free_share: float | None = None  # raise every split's share of sentences without entities
    published: str = ""  # full-data figure from the literature, for the report


CLUENER_KEEP = ("book", "movie", "scene")
CLUENER_LABELS = ("address", "book", "company", "game", "government", "movie", "name",
                  "organization", "position", "scene")

CORPORA = {c.name: c for c in (
    Corpus("ccfbdci", ("ccfbdci/ccfbdci.jsonl",),
           published="no widely cited full-data figure"),
    Corpus("cluener", ("CLUENER2020/cluener_public/train.json", "CLUENER2020/cluener_public/dev.json"),
           published="about 0.79-0.80 (BERT-base / RoBERTa-wwm-large, CLUENER2020 paper)"),
    Corpus("msra", ("MSRA/msra_train_bio", "MSRA/msra_test_bio"),
           published="about 0.93-0.95 (Lattice LSTM 0.93; BERT-style models, full 46k sentences)"),
    Corpus("peoplesdaily", ("PeoplesDaily/example.dev", "PeoplesDaily/example.test"),
           published="about 0.95 (BERT-style models, full People's Daily 1998 training set)"),
    Corpus("msra-sparse", ("MSRA/msra_train_bio", "MSRA/msra_test_bio"), entity_free_share=0.75),
    Corpus("cluener-rare", ("CLUENER2020/cluener_public/train.json", "CLUENER2020/cluener_public/dev.json"),
           label_map={lb: "-" for lb in CLUENER_LABELS if lb not in CLUENER_KEEP}),
)}


def prepare_corpus(corpus: Corpus, out: Path, *, max_rows: int, seed: int = 42) -> Path:
    """A prepared folder for `corpus` under `out` (reused when present)."""
    from nerft.data.example import read_examples, write_jsonl
    from nerft.data.prepare import prepare, write_prepared

    folder = out / corpus.name
    if (folder / "stats.json").is_file() and _rows(folder / "train.jsonl") >= max_rows:
        return folder  # a longer preparation starts with the same rows (the same seeded shuffles)
    prep = prepare([data_root() / f for f in corpus.files], user_label_map=corpus.label_map or None)
    write_prepared(prep, folder, ratios=(0.7, 0.15, 0.15), seed=seed)
    rng = random.Random(seed)
    for split in ("train", "val", "test"):
        path = folder / f"{split}.jsonl"
        rows = list(read_examples(path))
        # Files that run article by article (MSRA, People's Daily) cluster similar sentences:
        # a seeded shuffle makes every prefix (train_limit, the test slice) a fair sample.
        rng.shuffle(rows)
        if corpus.entity_free_share is not None:
            rows = _with_entity_free_share(rows, corpus.entity_free_share, rng)
        write_jsonl(path, (ex.to_dict() for ex in rows[:max_rows]))
    return folder


def _rows(path: Path) -> int:
    with path.open(encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def _with_entity_free_share(rows, share: float, rng: random.Random) -> list:
    """Leave out sentences with entities (seeded) until `share` of the rows have none; order kept."""
    free = sum(1 for ex in rows if not ex.entities)
    keep_with = int(free * (1 - share) / share)
    with_idx = [i for i, ex in enumerate(rows) if ex.entities]
    kept = set(rng.sample(with_idx, min(keep_with, len(with_idx))))
    return [ex for i, ex in enumerate(rows) if not ex.entities or i in kept]


def f1_on(model_ref: str, test, labels, batch_size: int) -> dict:
    from nerft.eval.workflow import evaluate_model

    ev = evaluate_model(model_ref, test, labels, name=model_ref, batch_size=batch_size)
    strict = ev.result.scores["strict"].micro
    return {"f1": round(strict.f1, 4), "precision": round(strict.precision, 4),
            "recall": round(strict.recall, 4), "eval_seconds": round(ev.seconds, 1),
            "sentences_per_s": round(len(test) / max(ev.seconds, 1e-9), 2)}


def run_point(corpus_dir: Path, size: int, args, work: Path) -> dict:
    from rich.console import Console

    from nerft.config import load_config
    from nerft.train.workflow import train

    run_dir = work / "runs" / f"{corpus_dir.name}-{size}"
    overrides = [f"data.dir={json.dumps(str(corpus_dir))}", f"data.train_limit={size}",
                 f"training.output_dir={json.dumps(str(run_dir))}", "training.epochs=1",
                 "tracking.swanlab=off", *args.set]
    config = load_config(args.config, overrides)
    started = time.perf_counter()
    summary = train(config, overwrite=True, console=Console(stderr=True, quiet=True))
    seconds = time.perf_counter() - started
    from nerft.runs.run_dir import RunDir, read_json_lines

    # the training rate `nerft train` prints (its last logged step): samples over the wall time
    # since training began, validation pauses included
    rates = [m["samples_per_s"] for m in read_json_lines(RunDir(run_dir).metrics) if "samples_per_s" in m]
    return {"run": str(run_dir), "steps": summary.steps, "best_step": summary.best_step,
            "best_val_f1": summary.best_f1, "train_seconds": round(seconds, 1),
            "samples_per_s": rates[-1] if rates else None}


def main(argv=None) -> dict:
    from bench.facts import machine_facts
    from nerft.data.example import read_examples

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", nargs="+", default=["ccfbdci", "cluener", "msra", "peoplesdaily"],
                   choices=sorted(CORPORA))
    p.add_argument("--sizes", nargs="+", type=int, default=[160, 640, 2560])
    p.add_argument("--test", type=int, default=200, help="test sentences per corpus (fixed slice)")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "demo-cpu.yaml")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="recipe overrides, as on the `nerft train` command line")
    p.add_argument("--model", default=None, help="model.source (default: the recipe's)")
    p.add_argument("--name", default="curve")
    p.add_argument("--work", type=Path, default=Path("/tmp/nerft-curve"))
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--resume", action="store_true", help="add to <name>.json: keep its points "
                   "(same recipe and test slice) and measure only the missing ones")
    p.add_argument("--combine", nargs="+", metavar="NAME", help="train nothing: write <name>.json "
                   "from these earlier results in --out (same config and test slice; a later one's "
                   "point replaces an earlier one's at the same size, and the table says so)")
    args = p.parse_args(argv)
    command = "python -m bench.curve " + " ".join(argv if argv is not None else os.sys.argv[1:])
    if args.combine:
        results = combine([json.loads((args.out / f"{n}.json").read_text(encoding="utf-8"))
                           for n in args.combine], args.combine, command)
        _write(results, args.out / f"{args.name}.json")
        return results
    if args.model:
        args.set = [f"model.source={args.model}", *args.set]

    results = {"command": command,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_facts(),
               "config": str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
               "overrides": args.set, "test_rows": args.test, "corpora": {}}
    out_json = args.out / f"{args.name}.json"
    if args.resume and out_json.is_file():
        results = _resumed(json.loads(out_json.read_text(encoding="utf-8")), results)
    prepared = {}
    for name in args.corpus:  # zero-shot first, then each size over all corpora: a long run
        corpus = CORPORA[name]  # stopped early still has every corpus at the smaller sizes
        folder = prepare_corpus(corpus, args.work / "data", max_rows=max(max(args.sizes), args.test, 1000))
        test = list(read_examples(folder / "test.jsonl"))[:args.test]
        labels = tuple(json.loads((folder / "stats.json").read_text(encoding="utf-8"))["labels"])
        prepared[name] = folder, test, labels
        row = {"published": corpus.published, "test_entities": sum(len(ex.entities) for ex in test),
               "test_entity_free": sum(1 for ex in test if not ex.entities), "points": {}}
        kept = results["corpora"].get(name, {}).get("points", {})
        row["points"].update(kept)
        results["corpora"][name] = row
        # an untrained tagging head tags at random: the zero-shot point is generation's
        if "0" not in kept and not is_tagger(_recipe(args, folder).method.head):
            row["points"]["0"] = f1_on(_model_source(args, folder), test, labels, batch_size=16)
            _say(name, 0, row["points"]["0"])
            _write(results, out_json)
    for size in args.sizes:
        for name, (folder, test, labels) in prepared.items():
            if str(size) in results["corpora"][name]["points"]:
                continue  # kept from the file being resumed
            point = run_point(folder, size, args, args.work)
            point.update(f1_on(point["run"], test, labels, batch_size=16))
            results["corpora"][name]["points"][str(size)] = point
            _say(name, size, point)
            _write(results, out_json)  # a long run keeps what it measured so far
    _write(results, out_json)
    return results


def _resumed(old: dict, new: dict) -> dict:
    """`new` carrying `old`'s points; refuses to mix different recipes or test slices."""
    for key in ("config", "overrides", "test_rows"):
        if old.get(key) != new[key]:
            raise SystemExit(f"--resume: {key} differs from the file's ({old.get(key)!r} there, "
                             f"{new[key]!r} now); use another --name")
    commands = old.get("commands") or [{"command": old["command"], "date": old["date"]}]
    new["commands"] = [*commands, {"command": new["command"], "date": new["date"]}]
    new["corpora"] = old["corpora"]
    return new


def combine(parts: list[dict], names: list[str], command: str) -> dict:
    """One curve from several results of the same config and test slice, e.g. a size measured
    again with another override; every point keeps the overrides it was measured with."""
    first = parts[0]
    for name, part in zip(names[1:], parts[1:]):
        for key in ("config", "test_rows"):
            if part.get(key) != first.get(key):
                raise SystemExit(f"--combine: {name} has another {key} ({part.get(key)!r}, "
                                 f"{names[0]} has {first.get(key)!r}); its points are not comparable")
    out = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "config": first["config"], "overrides": [], "test_rows": first["test_rows"],
           "sources": [], "replaced": [], "corpora": {}}
    for name, part in zip(names, parts):
        runs = part.get("commands") or [{"command": part["command"], "date": part["date"]}]
        out["sources"].append({"name": name, "commands": runs, "overrides": part["overrides"],
                               "machine": part.get("machine")})  # each source ran on its own
        for corpus, row in part["corpora"].items():
            kept = out["corpora"].setdefault(corpus, {**row, "points": {}})
            for size, point in row["points"].items():
                old = kept["points"].get(size)
                if old is not None and size != "0":  # zero-shot: the same untrained model
                    out["replaced"].append({"corpus": corpus, "size": int(size), "f1": old["f1"],
                                            "from": old["from"], "by": name})
                kept["points"][size] = {**point, "from": name, "overrides": part["overrides"]}
    return out


def _recipe(args, folder: Path):
    from nerft.config import load_config

    return load_config(args.config, [f"data.dir={json.dumps(str(folder))}", *args.set])


def _model_source(args, folder: Path) -> str:
    return _recipe(args, folder).model.source


def _say(name: str, size: int, point: dict) -> None:
    extra = f", train {point['train_seconds']} s, best step {point['best_step']}" if size else ""
    print(f"{name:14s} {size:5d} sentences: strict F1 {point['f1']:.3f} "
          f"(P {point['precision']:.3f} R {point['recall']:.3f}){extra}", flush=True)


def _write(results: dict, out_json: Path) -> None:
    from bench.report import write_results

    write_results(results, out_json, markdown(results))
    plot(results, out_json.with_suffix(".png"))


def markdown(results: dict) -> str:
    sizes = sorted({int(s) for row in results["corpora"].values() for s in row["points"]})
    head = "| corpus (test rows: entities / without any) | " + " | ".join(
        "zero-shot" if s == 0 else f"{s} sentences" for s in sizes) + " | published, full data |"
    def ran(runs: list[dict]) -> str:
        return ", then ".join(f"`{r['command']}` ({r['date']})" for r in runs)

    if "sources" in results:  # combined: where each point was measured
        origin = "; ".join(f"{src['name']}: {ran(src['commands'])}" for src in results["sources"]) \
            + f"; combined by `{results['command']}`; overrides of a point in its cell"
    else:
        origin = ran(results.get("commands") or [{"command": results["command"], "date": results["date"]}])
    lines = [origin + f"; recipe {results['config']} {' '.join(results['overrides'])}; strict micro "
             f"F1 on the first {results['test_rows']} test sentences; training minutes in brackets",
             "", head,
             "|" + "---|" * (len(sizes) + 2)]
    for name, row in results["corpora"].items():
        cells = []
        for s in sizes:
            point = row["points"].get(str(s))
            if point is None:
                cells.append("not run")
            elif s == 0:
                cells.append(f"{point['f1']:.3f}")
            else:  # time_note: a point whose clock is not a speed figure (paused, contended)
                when = point.get("time_note") or f"{point['train_seconds'] / 60:.1f} min"
                when += "".join(f", {o}" for o in point.get("overrides", ()))
                cells.append(f"{point['f1']:.3f} ({when})")
        lines.append(f"| {name} ({row['test_entities']} / {row['test_entity_free']}) | "
                     + " | ".join(cells) + f" | {row['published'] or '-'} |")
    for r in results.get("replaced", ()):
        lines.append(f"\nReplaced: {r['corpus']} at {r['size']} sentences from {r['from']} "
                     f"(F1 {r['f1']:.3f}), by {r['by']}'s point.")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in results["corpora"].items():
        xs = sorted(int(s) for s in row["points"])
        ax.plot([max(x, 10) for x in xs], [row["points"][str(x)]["f1"] for x in xs], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("training sentences (zero-shot drawn at 10)")
    ax.set_ylabel("strict micro F1 (test)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("nerft learning curve")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
