"""nerft's decoder with and without guessed tokens, on the same sentences and model.

    python -m bench.decoding runs/demo-cpu --data data/ccfbdci --rows 32 --batch-size 32

Times `AnswerGenerator.generate` with `guess=True` and `guess=False` (constrained decoding on,
the run's adapter merged as `nerft predict` loads it) on the first ROWS test sentences, prints
seconds, sentences/s and decoder steps for each, and whether the answers are identical.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from nerft.data.example import read_examples
from nerft.infer.generate import AnswerGenerator, DecodeOptions
from nerft.models.loader import load_model


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a nerft run directory, a model folder or a model source")
    p.add_argument("--data", type=Path, required=True, help="folder from `nerft data prepare`")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    texts = [ex.text for ex in read_examples(args.data / "test.jsonl")][:args.rows]
    model, tokenizer, task = load_model(args.model)
    result, answers = {"rows": len(texts), "batch_size": args.batch_size}, {}
    for guess in (True, False):
        generator = AnswerGenerator(model, tokenizer, task)
        start = time.perf_counter()
        decoded = generator.decode(texts, DecodeOptions(batch_size=args.batch_size, guess=guess))
        answers[guess] = decoded.answers
        seconds = time.perf_counter() - start
        result["guess" if guess else "no_guess"] = {
            "seconds": round(seconds, 1), "sentences_per_s": round(len(texts) / seconds, 3),
            **decoded.stats}
    result["identical_answers"] = answers[True] == answers[False]
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
