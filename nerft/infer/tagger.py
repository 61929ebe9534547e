"""The tagging head's decoder: one forward pass per batch of sentences, a BIO tag per token,
spans from the tags (`nerft.task.bio`). Nothing is generated, so the stop rule, the answer
grammar and constrained decoding do not apply; `DecodeOptions` other than `batch_size` are
ignored.

`TokenTagger` has the interface `predict_rows` expects of `AnswerGenerator` (`task`, `decode`,
`generate`); its `Answers` carry the spans themselves (a tagger knows where each entity is, so
nothing is parsed back from text), and its answer texts are those spans in the task's answer
format, as a generating model would have written them.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch

from nerft.infer.generate import Answers, DecodeOptions
from nerft.models.loader import InferenceError
from nerft.task.bio import spans_from_tags, tag_names, tokenize_sentences
from nerft.task.prompt import Task


def is_tagger(model) -> bool:
    """True for a backbone with a token-classification head (a PEFT wrapper looked through)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(inner).__name__.endswith("ForTokenClassification")


def head_tags(model) -> list[str]:
    """The tag of each output row of the model's head, as its config records them."""
    id2label = model.config.id2label
    return [id2label[i] for i in range(len(id2label))]


class TokenTagger:
    """BIO tags for one (model, tokenizer, task); a lock makes concurrent callers take turns."""

    def __init__(self, model, tokenizer, task: Task):
        self.model, self.tokenizer, self.task = model, tokenizer, task
        expected = tag_names(task.labels)
        if head_tags(model) != expected:
            raise InferenceError(f"the model's tagging head has the tags {head_tags(model)}, "
                                 f"the task's labels give {expected}: load it with its own labels")
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.defaults = DecodeOptions()
        self._lock = threading.Lock()

    def generate(self, texts: list[str], *, batch_size: int = 16, constrained: bool = True,
                 progress: Callable[[int], None] | None = None) -> list[str]:
        """The answer texts (spans in the task's format), as `AnswerGenerator.generate`."""
        return self.decode(texts, DecodeOptions(batch_size=batch_size), progress).answers

    @torch.no_grad()
    def tag_logits(self, texts: list[str], batch_size: int = 16,
                   progress: Callable[[int], None] | None = None):
        """(tokenized sentences, float32 tag logits [tokens, tags] of each), in input order;
        shortest sentences batched together so little is padded."""
        sentences = tokenize_sentences(self.tokenizer, texts)
        logits: list[torch.Tensor | None] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(sentences[i].ids))
        device = next(self.model.parameters()).device
        with self._lock:
            was_training = self.model.training
            self.model.eval()
            try:
                for k in range(0, len(order), max(1, batch_size)):
                    chunk = order[k:k + batch_size]
                    width = max(len(sentences[i].ids) for i in chunk)
                    if width:
                        ids = torch.full((len(chunk), width), self.pad, dtype=torch.long)
                        mask = torch.zeros((len(chunk), width), dtype=torch.long)
                        for row, i in enumerate(chunk):  # right padding: causal rows never see it
                            ids[row, :len(sentences[i].ids)] = torch.tensor(sentences[i].ids)
                            mask[row, :len(sentences[i].ids)] = 1
                        out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                    for row, i in enumerate(chunk):
                        n = len(sentences[i].ids)
                        logits[i] = out[row, :n].float().cpu() if n else torch.zeros(0, len(self.model.config.id2label))
                    if progress is not None:
                        progress(len(chunk))
            finally:
                if was_training:
                    self.model.train()
        return sentences, logits

    def decode(self, texts: list[str], options: DecodeOptions | None = None,
               progress: Callable[[int], None] | None = None) -> Answers:
        """Spans for `texts`, in input order (`Answers.spans`), with their answer texts."""
        options = options or self.defaults
        sentences, logits = self.tag_logits(texts, options.batch_size, progress)
        spans = [spans_from_tags(text, sentence, row.argmax(-1).tolist(), self.task.labels)
                 for text, sentence, row in zip(texts, sentences, logits)]
        return Answers(ids=[[] for _ in texts], answers=[self.task.format_answer(s) for s in spans],
                       stats={"forward_passes": -(-len(texts) // max(1, options.batch_size))},
                       prompt_tokens=[len(s.ids) for s in sentences], spans=spans)
