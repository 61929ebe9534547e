"""What the service decodes with: the model a reference names, and the one function the batching
worker calls (sentences in, answers and spans out); several adapter runs of one base model
share that base model's weights (`load_runs`)."""

from __future__ import annotations

from pathlib import Path

from nerft.errors import NerftError
from nerft.infer.generate import DecodeOptions
from nerft.infer.predict import Decoded, decoder_for, predict_rows
from nerft.models.loader import ModelRef, describe, load_model, quiet_peft
from nerft.serve.app import ServedRun
from nerft.task.prompt import Task

__all__ = ["Decoded", "ServeError", "check_together", "load_runs", "load_served",
           "sentence_decoder", "served_name"]


class ServeError(NerftError):
    """Runs that cannot be served from one process; one line naming them (exit code 2)."""


def served_name(ref: str) -> str:
    """The name a reference is served under: its folder's name, or the model source itself."""
    path = Path(ref).expanduser()
    return path.resolve().name if path.exists() else ref


def load_served(ref: str, labels: tuple[str, ...] | None = None):
    """(model, tokenizer, task, name) for a run directory, a `nerft export` folder or a model source.

    An export's `task.json` gives the labels; its system prompt must be the one this nerft
    builds from them, or the service would prompt the model differently from its training
    (`nerft.models.loader` checks it).
    """
    model, tokenizer, task = load_model(ref, labels=labels)
    return model, tokenizer, task, served_name(ref)


def sentence_decoder(model, tokenizer, task: Task, *, max_batch: int, adapter: str | None = None):
    """decode(texts) -> [Decoded]: greedy constrained answers, as `nerft predict` gives them
    (the same `predict_rows`).

    The generator is safe to share (callers take turns on its lock); the batching worker is
    what lets concurrent requests share one decode call. `adapter`: the PEFT adapter to make
    active first (several runs on one base model); the one batching worker runs one call at a
    time, so the switch and the call that follows it never interleave with another run's.
    """
    generator = decoder_for(model, tokenizer, task)
    options = DecodeOptions(batch_size=max_batch, constrained=True)

    def decode(texts: list[str]) -> list[Decoded]:
        if adapter is not None:
            model.set_adapter(adapter)
        return predict_rows(generator, [(str(i), t) for i, t in enumerate(texts)], options)

    return decode


def check_together(refs: list[str]) -> list[ModelRef]:
    """What each reference names, refused in one line unless they can share one base model:
    adapters (not full fine-tuned weights) on the same base model, in the same dtype and answer
    format, under distinct names."""
    found = [describe(ref) for ref in refs]
    names = [served_name(ref) for ref in refs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ServeError(f"{refs[names.index(name)]} and {refs[i]} would both be served as "
                             f"{name!r}; rename one folder")
    for ref, one in zip(refs, found):
        if one.adapter is None or one.task is None:
            what = "full fine-tuned weights" if one.task is not None else "a base model"
            raise ServeError(f"{ref} is {what}, not an adapter: several runs share one process "
                             "only as adapters of one base model; serve it alone")
    first, ref0 = found[0], refs[0]
    for ref, one in zip(refs[1:], found[1:]):
        for what, mine, theirs in [("base models", first.weights, one.weights),
                                   ("dtypes", first.dtype, one.dtype),
                                   ("heads", first.head, one.head),
                                   ("answer formats", first.task.answer_format,
                                    one.task.answer_format)]:
            if _same(mine) != _same(theirs):
                raise ServeError(f"{ref0} and {ref} have different {what} ({mine} and {theirs}); "
                                 "serve them from two processes")
    return found


def _same(value: str) -> str:
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


def load_runs(refs: list[str], labels: tuple[str, ...] | None = None, *,
              max_batch: int) -> list[ServedRun]:
    """The runs to serve, the first the default. One reference: its model merged (as fast as the
    base model). Several: the base model loaded once, each run's adapter loaded beside it
    (PEFT `load_adapter`) and switched on for that run's decode calls."""
    if len(refs) == 1:
        model, tokenizer, task, name = load_served(refs[0], labels)
        return [ServedRun(name, task, sentence_decoder(model, tokenizer, task, max_batch=max_batch))]
    if labels:
        raise ServeError("--labels applies to one served model; with several runs each answers "
                         "with its own labels")
    found = check_together(refs)
    model, tokenizer, first_task = load_model(refs[0], merge=False)  # adapter "default"
    adapters = ["default"]
    for i, one in enumerate(found[1:], 1):
        adapters.append(f"run{i}")
        with quiet_peft():
            model.load_adapter(str(one.adapter), adapter_name=adapters[-1])
    model.eval()
    return [ServedRun(served_name(ref), one.task,
                      sentence_decoder(model, tokenizer, one.task, max_batch=max_batch,
                                       adapter=adapter))
            for ref, one, adapter in zip(refs, found, adapters)]
