"""The continual-learning loop, end to end on the demo model, as a user runs it from README.md:

    python -m bench.loop                          # runs `nerft demo` first (about 10 minutes)
    python -m bench.loop --demo runs/demo-DATE    # reuses a finished `nerft demo --out` folder

1. `nerft serve` the demo's run with `--log-requests` and `--feedback` (a subprocess on a
   loopback port);
2. send it unseen MSRA test sentences (from the demo corpus, none of them in the demo's data)
   through `/v1/ner`, and take the first --corrections whose answer differs from the gold
   annotation;
3. correct each one in the web page in a headless Chromium as a user would (remove what is
   wrong, select each missing entity and click its label, send), the gold annotation playing
   the annotator;
4. `nerft data prepare` the feedback file (every correction into train.jsonl: `--split 1,0,0`);
5. `nerft train configs/demo-cpu.yaml init_from=RUN data.dir=FEEDBACK ...` (the parent's rows
   replayed; no validation rows of its own, so the parent's are used);
6. `nerft compare RUN CHILD --data DEMO_DATA --data CORRECTED`: exit 0 if the child is no worse
   than the parent by more than --max-drop points on the demo's test sentences and on the
   corrected ones, 1 otherwise (the gate).

Each step's command, exit code and seconds go to bench/results/<name>.json and .md, with counts
and F1 only: the sentences are corpus text and stay in --work, never in the repository.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def nerft(args: list[str], log: list, step: str, *, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m nerft ARGS` as a user would type it; the step recorded in `log`."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "nerft", *args], cwd=REPO, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - started
    log.append({"step": step, "command": "nerft " + " ".join(args), "exit_code": done.returncode,
                "seconds": round(seconds, 1)})
    print(f"[{step}] exit {done.returncode} in {seconds:.0f} s: nerft {' '.join(args)}", flush=True)
    if check and done.returncode != 0:
        raise SystemExit(f"{step} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done


def unseen_sentences(demo_data: Path, work: Path, count: int, max_chars: int = 60) -> list:
    """`count` annotated sentences from the demo corpus's test file (short ones, spread over
    the file) that are in none of the demo's splits."""
    from nerft.data.example import read_examples
    from nerft.data.prepare import prepare
    from nerft.demo.data import msra_corpus, short_blocks

    seen = {ex.text for split in ("train", "val", "test")
            for ex in read_examples(demo_data / f"{split}.jsonl")}
    test_file = msra_corpus()["msra_test.txt"]
    blocks = short_blocks(test_file, max_chars)
    picked = blocks[7::max(1, len(blocks) // (3 * count))]  # offset 7: away from the demo's own picks
    scratch = work / "candidates.bio"
    scratch.write_text("".join("\n".join(b) + "\n\n" for b in picked), encoding="utf-8")
    prep = prepare([scratch], ratios=(1.0, 0.0, 0.0))
    rows = [ex for split in prep.splits.values() for ex in split if ex.text not in seen]
    return rows[:count]


def spans_of(entities) -> set[tuple[int, int, str]]:
    return {(e["start"], e["end"], e["label"]) if isinstance(e, dict) else (e.start, e.end, e.label)
            for e in entities}


def collect_corrections(server, page, candidates: list, wanted: int, log: list) -> list[dict]:
    """Ask the service, then correct in the page the first `wanted` wrong answers."""
    import requests

    answers = []
    for i in range(0, len(candidates), 32):
        reply = requests.post(server.url + "/v1/ner", json={"texts": [ex.text for ex in candidates[i:i + 32]]},
                              timeout=600)
        reply.raise_for_status()
        answers.extend(r["entities"] for r in reply.json()["results"])
    wrong = [(ex, got) for ex, got in zip(candidates, answers) if spans_of(got) != spans_of(ex.entities)]
    log.append({"step": "ask", "command": f"POST /v1/ner ({len(candidates)} unseen sentences)",
                "sentences": len(candidates), "answered_exactly": len(candidates) - len(wrong)})
    corrections = []
    for ex, got in wrong[:wanted]:
        shown = page.find(ex.text)  # the user types the sentence and presses the button
        page.remove_all()
        for span in ex.entities:
            page.add(span.start, span.end, span.label)
        status = page.send()
        gold, said = spans_of(ex.entities), spans_of(got)
        corrections.append({"characters": len(ex.text), "model_entities": len(said),
                            "page_showed": len(shown), "gold_entities": len(gold),
                            "model_right": len(said & gold), "status": status})
    return corrections


def main(argv=None) -> dict:
    from bench.facts import machine_facts
    from bench.live import Page, Server, chromium_driver
    from bench.report import write_results

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", type=Path, default=None, help="a finished `nerft demo --out` folder "
                   "(default: run `nerft demo --out WORK/demo` first)")
    p.add_argument("--work", type=Path, default=Path("/tmp/nerft-loop"))
    p.add_argument("--corrections", type=int, default=2)
    p.add_argument("--candidates", type=int, default=64, help="unseen sentences sent to the service")
    p.add_argument("--sentences", type=Path, default=None, help="annotated canonical .jsonl to "
                   "draw them from (default: the demo corpus's test file, minus the demo's data)")
    p.add_argument("--set", nargs="*", default=["training.epochs=8"], metavar="KEY=VALUE",
                   help="overrides of the child's recipe (configs/demo-cpu.yaml)")
    p.add_argument("--max-drop", type=float, default=1.0)
    p.add_argument("--name", default="loop")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    steps: list[dict] = []
    started = time.perf_counter()
    results = {"command": "python -m bench.loop " + " ".join(argv if argv is not None else sys.argv[1:]),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_facts(),
               "steps": steps}

    demo = args.demo.resolve() if args.demo else work / "demo"
    if args.demo is None:
        nerft(["demo", "--out", str(demo)], steps, "train (nerft demo)")
    parent, demo_data = demo / "run", demo / "data"
    if args.sentences:
        from nerft.data.example import read_examples

        candidates = list(read_examples(args.sentences))[:args.candidates]
    else:
        candidates = unseen_sentences(demo_data, work, args.candidates)

    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    for f in ("requests.jsonl", "feedback.jsonl"):
        (logs / f).unlink(missing_ok=True)
    server = Server(parent, ["--log-requests", str(logs / "requests.jsonl"),
                             "--feedback", str(logs / "feedback.jsonl")], work / "serve.log")
    steps.append({"step": "serve", "command": f"nerft serve {parent} --log-requests "
                  f"{logs / 'requests.jsonl'} --feedback {logs / 'feedback.jsonl'}"})
    driver = chromium_driver()
    try:
        corrections = collect_corrections(server, Page(driver, server.url), candidates,
                                          args.corrections, steps)
    finally:
        driver.quit()
        server.stop()
    results["corrections"] = corrections
    print(f"[correct] {len(corrections)} answers corrected in the web page", flush=True)
    if len(corrections) < args.corrections:
        raise SystemExit(f"only {len(corrections)} of {len(candidates)} answers were wrong; "
                         "pass more --candidates")

    feedback = work / "data" / "feedback"
    prep = nerft(["data", "prepare", str(logs / "feedback.jsonl"), "--out", str(feedback),
                  "--split", "1,0,0", "--force"], steps, "prepare")
    stats = json.loads((feedback / "stats.json").read_text(encoding="utf-8"))
    results["prepare"] = {"totals": stats["totals"], "stdout_tail": prep.stdout.strip().splitlines()[-3:]}
    corrected = work / "corrected.jsonl"  # the corrected sentences as a data set of their own
    corrected.write_text((feedback / "train.jsonl").read_text(encoding="utf-8"), encoding="utf-8")

    child = work / "runs" / "feedback"
    nerft(["train", "configs/demo-cpu.yaml", f"init_from={parent}", f"data.dir={feedback}",
           f"training.output_dir={child}", "tracking.swanlab=off", "--overwrite", *args.set],
          steps, "train (init_from)")
    run = json.loads((child / "run.json").read_text(encoding="utf-8"))
    summary = json.loads((child / "summary.json").read_text(encoding="utf-8"))
    results["child"] = {key: run["init_from"].get(key) for key in
                        ("replay_share", "replay_rows", "new_rows", "validation_rows_from")}
    results["child"].update({"steps": summary.get("steps"), "best_step": summary.get("best_step"),
                             "best_val_f1": summary.get("best_f1")})

    gate = nerft(["compare", str(parent), str(child), "--data", str(demo_data), "--data", str(corrected),
                  "--max-drop", str(args.max_drop), "--out", str(work / "compare")],
                 steps, "gate (nerft compare)", check=False)
    if gate.returncode not in (0, 1):
        raise SystemExit(f"nerft compare failed:\n{gate.stderr[-3000:]}")
    results["gate"] = {"exit_code": gate.returncode, "passed": gate.returncode == 0,
                       "lines": gate.stdout.strip().splitlines()}
    results["minutes"] = round((time.perf_counter() - started) / 60, 1)
    write_results(results, args.out / f"{args.name}.json", markdown(results))
    print(markdown(results))
    return results


def markdown(results: dict) -> str:
    lines = [f"`{results['command']}` ({results['date']}), {results['minutes']} min", "",
             "| step | command | exit | seconds |", "|---|---|---|---|"]
    for s in results["steps"]:
        lines.append(f"| {s['step']} | `{s['command']}` | {s.get('exit_code', '-')} | "
                     f"{s.get('seconds', '-')} |")
    lines += ["", "Corrections made in the web page (counts only; the sentences stay out of the repository):", ""]
    for i, c in enumerate(results["corrections"], 1):
        lines.append(f"{i}. {c['characters']} characters: the model gave {c['model_entities']} "
                     f"entities ({c['model_right']} right), the correction has {c['gold_entities']}; "
                     f"page: \"{c['status']}\"")
    child = results["child"]
    lines += ["", f"Child run: {child['new_rows']} corrected rows + {child['replay_rows']} replayed "
              f"parent rows (replay share {child['replay_share']}), {child['steps']} steps, best "
              f"validation F1 {child['best_val_f1']} on the parent's validation rows.", "",
              f"Gate (exit {results['gate']['exit_code']}, "
              f"{'passed' if results['gate']['passed'] else 'failed'}):", "", "```",
              *results["gate"]["lines"], "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
