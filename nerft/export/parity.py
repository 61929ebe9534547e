"""The export's own check: the exported weights must behave like the run they came from.

Two comparisons on the same prompts: the next-token logits at every prompt position (within a
tolerance that depends on the dtype the weights were saved in), and the greedy constrained
answers of the decoding engine, which must be identical. A failure is an `ExportError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nerft.export import ExportCheckFailed, ExportError
from nerft.infer.predict import decoder_for
from nerft.infer.tagger import is_tagger
from nerft.task.bio import tokenize_sentences
from nerft.task.prompt import Task
from nerft.task.chat import render_prompt

# max |logit difference| allowed: atol + rtol * max |reference logit|. float32 merging only
# reorders sums (differences ~1e-6 seen on the tiny model); half precision rounds every weight.
# GGUF types are dequantised to float32 by transformers before the comparison. The k-quants
# (llama-quantize) move logits by 4% (q6_k) to 14% (q3_k_m) of the largest one on the
# 256-wide tiny model; allowed is about twice that. Identical answers are required all the same.
TOLERANCE = {"float32": (1e-3, 0.0), "bfloat16": (0.05, 0.02), "float16": (0.01, 0.005),
             "f16": (0.01, 0.005), "q8_0": (0.05, 0.02), "q6_k": (0.1, 0.08),
             "q5_k_s": (0.1, 0.12), "q5_k_m": (0.1, 0.12), "q4_k_s": (0.1, 0.18),
             "q4_k_m": (0.1, 0.18), "q3_k_m": (0.1, 0.3)}

# Hand-written probe sentences, used when the run's validation split is not at hand.
PROBE_SENTENCES = (
    "张三在北京大学读书。",
    "国务院总理李强今天在上海会见了法国外长。",
    "他说：“明天去杭州西湖看看。”",
    "没有什么特别的事情发生。",
)


@dataclass
class ParityReport:
    sentences: int
    max_logit_diff: float
    allowed: float
    dtype: str
    identical_answers: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def line(self) -> str:
        return (f"max |Δlogit| {self.max_logit_diff:.2e} (allowed {self.allowed:.2e}, {self.dtype}); "
                f"answers identical on {self.identical_answers}/{self.sentences} sentences")


@torch.no_grad()
def prompt_logits(model, tokenizer, task: Task, texts: list[str]) -> list[torch.Tensor]:
    """Float32 logits at every position of each sentence's prompt (one row at a time: no padding);
    for a tagging head, its tag logits at every token of the sentence."""
    out = []
    for text in texts:
        if is_tagger(model):
            ids = torch.tensor([tokenize_sentences(tokenizer, [text])[0].ids])
        else:
            ids = tokenizer(render_prompt(tokenizer, task, text), add_special_tokens=False,
                            return_tensors="pt")["input_ids"]
        out.append(model(input_ids=ids.to(model.device)).logits[0].float().cpu())
    return out


def reference_outputs(model, tokenizer, task: Task, texts: list[str]):
    """(logits, answers) of the model as the run uses it, computed before anything is merged."""
    answers = decoder_for(model, tokenizer, task).generate(texts)
    return prompt_logits(model, tokenizer, task, texts), answers


def check_parity(reference, model, tokenizer, task: Task, texts: list[str], dtype: str) -> ParityReport:
    """Compare `model` with `reference` = reference_outputs(...); raise ExportError on mismatch."""
    ref_logits, ref_answers = reference
    logits = prompt_logits(model, tokenizer, task, texts)
    answers = decoder_for(model, tokenizer, task).generate(texts)
    atol, rtol = TOLERANCE.get(dtype, TOLERANCE["bfloat16"])
    diff, allowed = 0.0, 0.0
    for ref, got in zip(ref_logits, logits):
        if ref.shape != got.shape:
            raise ExportError(f"exported model gives logits of shape {tuple(got.shape)}, the run "
                              f"{tuple(ref.shape)}: the tokenizer or vocabulary changed")
        diff = max(diff, (ref - got).abs().max().item())
        allowed = max(allowed, atol + rtol * ref.abs().max().item())
    same = sum(a == b for a, b in zip(ref_answers, answers))
    report = ParityReport(len(texts), diff, allowed, dtype, same)
    if diff > allowed:
        raise ExportCheckFailed(f"export check failed: {report.line()}")
    if same != len(texts):
        first = next(i for i, (a, b) in enumerate(zip(ref_answers, answers)) if a != b)
        raise ExportCheckFailed(f"export check failed: {report.line()}; first difference on "
                          f"{texts[first]!r}: run {ref_answers[first]!r}, export {answers[first]!r}")
    return report
