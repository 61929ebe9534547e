"""Active learning: does annotating the K sentences `nerft select` picks beat annotating K random ones?

    python -m bench.active                                   # msra, base 160, pool 400, add 100, test 200
    python -m bench.active --corpus ccfbdci --scratch --name active-ccfbdci

On one corpus prepared as bench/curve.py does (from $NERFT_DATA into --work, never into the
repository; seeded shuffle so every prefix is a fair sample):
1. base: `nerft train` with the recipe (--config, default configs/demo-cpu.yaml, --set
   overrides; one epoch) on the first --base training sentences;
2. pool: the next --pool training sentences, texts only, as if unlabeled;
3. selected: `rank_uncertain` (what `nerft select` runs) with the base run ranks the pool and the
   --add most uncertain are kept; random: a draw of --add sentences from the same pool with
   --seed (independent of the selection, so the two sets may share a few sentences: counted).
   Annotation is simulated by revealing the prepared gold rows of the chosen sentences;
4. +selected and +random: two `init_from=BASE` runs with the same recipe and seed, trained on
   the K revealed rows each, with the recipe's data.replay_share of the base's own rows mixed in
   (so both see the same number of rows and steps); with --scratch also a run from the untrained
   model on base + the random K (what retraining from scratch would give);
5. strict micro F1 of every run on the same fixed test slice (first --test test rows) with
   `nerft eval`'s evaluator, and paired bootstrap intervals over test sentences (`nerft compare`'s
   machinery) for +selected against +random and each against base.
Writes bench/results/<name>.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from pathlib import Path

from bench.curve import CORPORA, REPO, prepare_corpus


def split_pool(rows: list, base: int, pool: int) -> tuple[list, list]:
    """(base rows, pool rows): the first `base` training rows and the `pool` after them."""
    if len(rows) < base + pool:
        raise SystemExit(f"only {len(rows)} training rows prepared; --base {base} + --pool {pool} "
                         "needs more")
    return rows[:base], rows[base:base + pool]


def draw_random(pool: list, k: int, seed: int) -> list:
    """`k` pool rows drawn with `seed`, kept in pool order (reproducible, model-independent)."""
    picked = sorted(random.Random(seed).sample(range(len(pool)), k))
    return [pool[i] for i in picked]


def select_uncertain(run: Path, pool: list, k: int, batch_size: int) -> tuple[list, list[dict], float]:
    """(the `k` pool rows the base run is least sure of, in pool order; their scores, most
    uncertain first; seconds). The selector sees only ids and texts."""
    from nerft.models.loader import load_model
    from nerft.infer.select import rank_uncertain

    started = time.perf_counter()
    model, tokenizer, task = load_model(str(run))
    scored = rank_uncertain(model, tokenizer, task, [(ex.id, ex.text) for ex in pool],
                            batch_size=batch_size)
    seconds = time.perf_counter() - started
    chosen = {s.id: s for s in scored[:k]}
    scores = [{"id": s.id, "margin": round(s.margin, 6), "decisions": s.decisions}
              for s in scored[:k]]
    return [ex for ex in pool if ex.id in chosen], scores, seconds


def data_folder(corpus_dir: Path, rows: list, out: Path) -> Path:
    """A prepared-style folder: `rows` (gold, revealed) as train.jsonl; the corpus's own val,
    test and stats (labels) beside them."""
    from nerft.data.example import write_jsonl

    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", (ex.to_dict() for ex in rows))
    for name in ("val.jsonl", "test.jsonl", "stats.json"):
        shutil.copyfile(corpus_dir / name, out / name)
    return out


def train_run(name: str, data_dir: Path, rows: int, args, work: Path, extra: list[str]) -> dict:
    from rich.console import Console

    from nerft.config import load_config
    from nerft.train.workflow import train

    run_dir = work / "runs" / name
    overrides = [f"data.dir={json.dumps(str(data_dir))}", f"data.train_limit={rows}",
                 f"training.output_dir={json.dumps(str(run_dir))}", "training.epochs=1",
                 "tracking.swanlab=off", *args.set, *extra]
    config = load_config(args.config, overrides)
    started = time.perf_counter()
    summary = train(config, overwrite=True, console=Console(stderr=True, quiet=True))
    seconds = time.perf_counter() - started
    return {"run": str(run_dir), "new_rows": rows, "steps": summary.steps,
            "best_step": summary.best_step, "best_val_f1": summary.best_f1,
            "train_seconds": round(seconds, 1), "replay_share": config.data.replay_share
            if config.init_from is not None else 0.0}


def score(run: str, test: list, labels, batch_size: int) -> tuple[dict, list]:
    """Strict micro F1 of `run` on `test`, and its predicted spans per sentence."""
    from nerft.data.example import Span
    from nerft.eval.workflow import evaluate_model

    ev = evaluate_model(run, test, labels, name=run, batch_size=batch_size)
    strict = ev.result.scores["strict"].micro
    spans = [[Span(e["start"], e["end"], e["label"], e["text"]) for e in p["entities"]]
             for p in ev.predictions]
    return ({"f1": round(strict.f1, 4), "precision": round(strict.precision, 4),
             "recall": round(strict.recall, 4), "eval_seconds": round(ev.seconds, 1)}, spans)


def set_facts(rows: list) -> dict:
    """What an annotator would have worked through: sentences, characters, entities."""
    labels: dict[str, int] = {}
    for ex in rows:
        for s in ex.entities:
            labels[s.label] = labels.get(s.label, 0) + 1
    return {"sentences": len(rows), "characters": sum(len(ex.text) for ex in rows),
            "entities": sum(len(ex.entities) for ex in rows),
            "entity_free": sum(1 for ex in rows if not ex.entities),
            "entities_per_label": dict(sorted(labels.items())), "ids": [ex.id for ex in rows]}


def main(argv=None) -> dict:
    from bench.facts import machine_facts
    from nerft.data.example import read_examples
    from nerft.eval.compare import compare_predictions

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default="msra", choices=sorted(CORPORA))
    p.add_argument("--base", type=int, default=160, help="training sentences of the base run")
    p.add_argument("--pool", type=int, default=400, help="unlabeled sentences to choose from")
    p.add_argument("--add", type=int, default=100, help="sentences annotated (selected / random)")
    p.add_argument("--test", type=int, default=200, help="test sentences (fixed slice)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draw")
    p.add_argument("--scratch", action="store_true",
                   help="also train from scratch on base + the random sentences")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "demo-cpu.yaml")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="recipe overrides, as on the `nerft train` command line")
    p.add_argument("--model", default=None, help="model.source (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=16, help="decoding batch (select, eval)")
    p.add_argument("--name", default="active")
    p.add_argument("--work", type=Path, default=Path("/tmp/nerft-active"))
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args(argv)
    if not 0 < args.add <= args.pool:
        p.error(f"--add {args.add} must be between 1 and --pool {args.pool}")
    if args.model:
        args.set = [f"model.source={args.model}", *args.set]

    work = args.work
    folder = prepare_corpus(CORPORA[args.corpus], work / "data",
                            max_rows=max(args.base + args.pool, args.test, 1000))
    base_rows, pool = split_pool(list(read_examples(folder / "train.jsonl")), args.base, args.pool)
    test = list(read_examples(folder / "test.jsonl"))[:args.test]
    labels = tuple(json.loads((folder / "stats.json").read_text(encoding="utf-8"))["labels"])

    results = {"command": "python -m bench.active " + " ".join(argv if argv is not None else os.sys.argv[1:]),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_facts(),
               "config": str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
               "overrides": args.set, "corpus": args.corpus, "base_rows": args.base,
               "pool_rows": args.pool, "added": args.add, "seed": args.seed,
               "test_rows": len(test), "test_entities": sum(len(ex.entities) for ex in test),
               "runs": {}, "sets": {}, "comparisons": {}}
    out_json = args.out / f"{args.name}.json"

    base = train_run("base", folder, args.base, args, work, [])
    results["runs"]["base"] = base
    say("base", base)

    selected, scores, select_seconds = select_uncertain(Path(base["run"]), pool, args.add, args.batch_size)
    randoms = draw_random(pool, args.add, args.seed)
    results["selection_seconds"] = round(select_seconds, 1)
    results["sets"] = {"selected": {**set_facts(selected), "scores": scores},
                       "random": set_facts(randoms),
                       "shared": len({ex.id for ex in selected} & {ex.id for ex in randoms})}
    print(f"selected {args.add} of {args.pool} in {select_seconds:.0f} s: "
          f"{results['sets']['selected']['entities']} entities vs "
          f"{results['sets']['random']['entities']} in the random draw "
          f"({results['sets']['shared']} sentences in both)", flush=True)

    # Both continued runs learn from every one of the K annotated sentences (the annotation
    # budget is what is compared), so the recipe's entity-free cap is off for them.
    parent = [f"init_from={json.dumps(base['run'])}", "data.max_empty_share=null"]
    for name, rows in (("selected", selected), ("random", randoms)):
        data = data_folder(folder, rows, work / "added" / name)
        results["runs"][name] = train_run(name, data, args.add, args, work, parent)
        say(f"+{name}", results["runs"][name])
    if args.scratch:
        data = data_folder(folder, base_rows + randoms, work / "added" / "scratch-random")
        results["runs"]["scratch-random"] = train_run("scratch-random", data, args.base + args.add,
                                                      args, work, [])
        say("scratch", results["runs"]["scratch-random"])

    spans = {}
    for name, run in results["runs"].items():
        figures, spans[name] = score(run["run"], test, labels, args.batch_size)
        run.update(figures)
        _write(results, out_json)  # a long run keeps what it measured so far
    for a, b in (("random", "selected"), ("base", "selected"), ("base", "random")):
        c = compare_predictions("test", test, spans[a], spans[b])
        results["comparisons"][f"{b} vs {a}"] = {
            "delta": round(c.delta, 2), "ci_low": round(c.ci_low, 2), "ci_high": round(c.ci_high, 2),
            "b_better_share": c.b_better_share}
    _write(results, out_json)
    print(markdown(results), flush=True)
    return results


def say(name: str, run: dict) -> None:
    print(f"{name:10s} trained: {run['steps']} steps, {run['train_seconds']} s, "
          f"best step {run['best_step']}", flush=True)


def _write(results: dict, out_json: Path) -> None:
    from bench.report import write_results

    write_results(results, out_json, markdown(results))


WHAT = {"base": "base ({base} sentences)", "selected": "+{add} selected (init_from base)",
        "random": "+{add} random (init_from base)",
        "scratch-random": "from scratch on {base} + {add} random"}


def markdown(results: dict) -> str:
    r = results
    share = r["runs"].get("selected", {}).get("replay_share")
    lines = [f"`{r['command']}` ({r['date']}, {r['machine'].get('cpu', '')}; recipe {r['config']} "
             f"{' '.join(r['overrides'])}); corpus {r['corpus']}, pool {r['pool_rows']} sentences "
             f"after the base's; strict micro F1 on the first {r['test_rows']} test sentences "
             f"({r['test_entities']} entities)"
             + (f"; continued runs replay {share:.0%} of the base's rows" if share is not None else ""),
             "", "| run | strict F1 | P | R | steps | training | test decoding |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, run in r["runs"].items():
        what = WHAT.get(name, name).format(base=r["base_rows"], add=r["added"])
        if "f1" in run:
            lines.append(f"| {what} | {run['f1']:.3f} | {run['precision']:.3f} | {run['recall']:.3f} "
                         f"| {run['steps']} | {run['train_seconds'] / 60:.1f} min "
                         f"| {run['eval_seconds'] / 60:.1f} min |")
        else:
            lines.append(f"| {what} | not scored yet | | | {run['steps']} "
                         f"| {run['train_seconds'] / 60:.1f} min | |")
    if r["sets"]:
        s, rnd = r["sets"]["selected"], r["sets"]["random"]
        lines += ["", f"Selection: {r.get('selection_seconds', 0) / 60:.1f} min for {r['pool_rows']} "
                  f"sentences; {r['sets']['shared']} sentences in both sets.", "",
                  "| added set | sentences | characters | entities | without entities |",
                  "|---|---:|---:|---:|---:|",
                  f"| selected | {s['sentences']} | {s['characters']} | {s['entities']} | {s['entity_free']} |",
                  f"| random | {rnd['sentences']} | {rnd['characters']} | {rnd['entities']} | {rnd['entity_free']} |"]
    if r["comparisons"]:
        lines += ["", "Paired bootstrap over test sentences (1000 resamples), F1 points:", "",
                  "| comparison | change | 95% CI | better in |", "|---|---:|---|---:|"]
        for name, c in r["comparisons"].items():
            lines.append(f"| {name} | {c['delta']:+.2f} | [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] "
                         f"| {c['b_better_share']:.0%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
