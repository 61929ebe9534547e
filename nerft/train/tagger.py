"""Training the tagging head (method.head tagger): the prepared rows as BIO token tags, and
its loss.

The rows are the sentence's tokens alone (`nerft.task.bio.tokenize_sentences`, the same call
inference makes), each labelled with its tag; they batch as right-padded rows (the `none`
layout of `PackedCollator`): with no shared prompt there is nothing for packing to share.
"""

from __future__ import annotations

import torch

from nerft.data.example import Example
from nerft.task.bio import TagReport, token_tags, tokenize_sentences
from nerft.train.collate import summed_cross_entropy
from nerft.train.encode import EncodeReport, Encoded

# Printed by `nerft train` for a tagger run, so nobody looks for settings that do nothing.
NOT_USED = ("method.head tagger: no text is generated, so the stop rule, the answer grammar "
            "and constrained decoding (eval.constrained) do not apply; training.packing is "
            "not used (rows are the sentences alone, right-padded)")


def encode_tagged(tokenizer, labels: tuple[str, ...], examples: list[Example],
                  max_length: int) -> tuple[list[Encoded], EncodeReport, TagReport]:
    """Token ids with a tag per token; rows over `max_length` tokens are dropped and counted,
    entities the tags cannot hold exactly are counted in the `TagReport`."""
    report, tags_report = EncodeReport(), TagReport()
    out: list[Encoded] = []
    for ex, sentence in zip(examples, tokenize_sentences(tokenizer, [ex.text for ex in examples])):
        if len(sentence.ids) > max_length:
            report.too_long.append(ex.id)
            continue
        tags = token_tags(sentence, ex.entities, labels, tags_report, ex.id)
        out.append(Encoded(ex.id, sentence.ids, tags, 0))
    report.kept = len(out)
    return out, report, tags_report


def tagging_loss(model, inputs: dict[str, torch.Tensor],
                 num_items: int | torch.Tensor | None = None):
    """Cross-entropy of the head's tags over the real tokens (padding is IGNORE), summed and
    divided by `num_items` (the Trainer's count of tagged tokens over the accumulated batch),
    as `answer_only_loss` returns it: (loss, number of tagged tokens)."""
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                use_cache=False)
    return summed_cross_entropy(out.logits, inputs["labels"], num_items)
