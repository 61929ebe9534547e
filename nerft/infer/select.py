"""Active learning: rank unlabeled sentences by how unsure the model is of its own answer.

The score. Each sentence is answered by greedy constrained decoding (as `nerft predict`
does). The answer is then read back through the model once (teacher forcing) while the
answer's constraint automaton walks along it: at every position where the constraint left
the model a choice (more than one token allowed: entity or none, where an entity starts and
ends, which label, another entity or the end), the *margin* is the log-probability of the
token it chose minus that of the best other allowed token, both renormalised over the allowed
tokens. A sentence's margin is the smallest over its decisions: one close call is enough to
make an answer worth checking. Sentences are ranked by margin, smallest first
(`uncertainty` = -margin is what `to_annotate.jsonl` records).

A tagging head (method.head tagger) decides once per token: its margin there is the
log-probability of the tag it chose minus that of the next best tag, and a sentence's margin is
again the smallest (`tagger_margins`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from nerft.data.annotation_formats import PreAnnotated
from nerft.data.example import Span
from nerft.infer.constrain import AnswerConstraint
from nerft.infer.generate import DecodeOptions
from nerft.infer.predict import decoder_for, predict_rows
from nerft.infer.tagger import TokenTagger
from nerft.infer.stopping import answer_token_budget
from nerft.task.chat import encode_prompts
from nerft.task.prompt import Task


@dataclass
class Scored:
    id: str
    text: str
    answer: str
    entities: list[Span]
    margin: float  # smallest log-probability margin over the answer's decisions (inf: none)
    decisions: int
    where: str = ""  # the answer text up to the closest call, for a reader

    @property
    def uncertainty(self) -> float:
        return -self.margin

    @property
    def score(self) -> float:
        """The score an annotation tool sorts by (Label Studio's prediction `score`).

        logistic(margin) = p(chosen) / (p(chosen) + p(rival)) at the answer's closest call:
        the chosen token's share against its best rival there. 0.5 is a coin toss; 1.0 an
        answer that left no choice open (no decision, margin infinite). It orders sentences
        exactly as the margin does, so sorting by score ascending is `select`'s ranking."""
        if math.isinf(self.margin):
            return 1.0
        return round(1.0 / (1.0 + math.exp(min(-self.margin, 700.0))), 6)

    def pre_annotated(self, rank: int) -> PreAnnotated:
        """The row for an annotation tool: the guesses, the score, the rank beside the text."""
        return PreAnnotated(self.id, self.text, self.entities, self.score,
                            {"rank": rank, "uncertainty": None if math.isinf(self.margin)
                             else round(self.uncertainty, 6)})  # JSON has no infinity

    def to_row(self, rank: int) -> dict:
        """A canonical row: the model's guesses as pre-annotations, the score beside them."""
        return {"id": self.id, "text": self.text, "entities": [e.to_dict() for e in self.entities],
                "selection": {"rank": rank, "uncertainty": round(self.uncertainty, 6),
                              "margin": round(self.margin, 6), "decisions": self.decisions,
                              "closest_call_after": self.where}}


@torch.no_grad()
def decision_margins(model, tokenizer, task: Task, text: str, answer_ids: list[int],
                     eot: int) -> tuple[list[float], list[int]]:
    """(margin at each decision, answer position of each decision) of one answer."""
    prompt = encode_prompts(tokenizer, task, [text])[0]
    ids = prompt + answer_ids + [eot]
    device = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float()
    row = AnswerConstraint(tokenizer, task, [text], [answer_token_budget(text)]).rows[0]
    margins, where = [], []
    for k, token in enumerate(answer_ids + [eot]):
        allowed = row.allowed()
        if len(allowed) > 1:
            scores = torch.log_softmax(logits[len(prompt) - 1 + k, allowed.to(device)], -1)
            position = int(torch.searchsorted(allowed, token))
            if position < len(allowed) and int(allowed[position]) == token:
                chosen = scores[position]
                others = torch.cat([scores[:position], scores[position + 1:]])
                margins.append(float(chosen - others.max()))
                where.append(k)
        row.advance(token)
    return margins, where


def rank_uncertain(model, tokenizer, task: Task, rows: list[tuple[str, str]], *,
                   batch_size: int = 16, progress: Callable[[int], None] | None = None) -> list[Scored]:
    """Every (id, text) row scored, most uncertain first (ties keep input order)."""
    generator = decoder_for(model, tokenizer, task)
    if isinstance(generator, TokenTagger):
        return sorted(tagger_margins(generator, rows, batch_size, progress), key=lambda s: s.margin)
    decoded = predict_rows(generator, rows, DecodeOptions(batch_size=batch_size, constrained=True))
    scored = []
    for d in decoded:
        margins, where = decision_margins(model, tokenizer, task, d.text, d.ids, generator.decoder.eot)
        low = min(range(len(margins)), key=margins.__getitem__) if margins else None
        scored.append(Scored(
            d.id, d.text, d.answer, d.entities,
            margins[low] if low is not None else math.inf, len(margins),
            tokenizer.decode(d.ids[:where[low]], skip_special_tokens=True) if low is not None else ""))
        if progress is not None:
            progress(1)
    return sorted(scored, key=lambda s: s.margin)


def tagger_margins(tagger: TokenTagger, rows: list[tuple[str, str]], batch_size: int,
                   progress: Callable[[int], None] | None = None) -> list[Scored]:
    """Each row scored by the tagging head: the smallest top-two tag margin over its tokens."""
    decoded = predict_rows(tagger, rows, DecodeOptions(batch_size=batch_size))
    sentences, logits = tagger.tag_logits([t for _, t in rows], batch_size)
    scored = []
    for d, sentence, row in zip(decoded, sentences, logits):
        margin, where = math.inf, ""
        if row.shape[0] and row.shape[1] > 1:
            top = torch.log_softmax(row, -1).topk(2, dim=-1).values
            gaps = top[:, 0] - top[:, 1]
            low = int(gaps.argmin())
            margin, where = float(gaps[low]), d.text[:sentence.offsets[low][0]]
        scored.append(Scored(d.id, d.text, d.answer, d.entities, margin, row.shape[0], where))
        if progress is not None:
            progress(1)
    return scored
