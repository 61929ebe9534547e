"""Measuring a training run from the outside: memory, executed FLOPs, time per optimizer step.

The same instrumentation wraps both sides (the baseline's HF Trainer and nerft's NerTrainer), so
neither side gets code the other does not. Nothing here changes what is computed.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import torch
from torch.utils.flop_counter import FlopCounterMode


class RssSampler:
    """Peak resident memory of this process, overall and per named phase (sampled every 20 ms)."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.peaks: dict[str, int] = {}
        self._current: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def _sample(self):
        rss = self._proc.memory_info().rss
        phase = self._current
        if phase is not None and rss > self.peaks.get(phase, 0):
            self.peaks[phase] = rss

    def enter(self, name: str | None) -> str | None:
        """Switch to phase `name` (None: no phase); return the phase that was current."""
        self._sample()
        previous, self._current = self._current, name
        self._sample()
        return previous

    @contextmanager
    def phase(self, name: str):
        previous = self.enter(name)
        try:
            yield
        finally:
            self.enter(previous)

    def close(self) -> dict:
        """Stop sampling; return peaks in MiB, plus the process's lifetime peak (getrusage)."""
        import resource

        self._stop.set()
        self._thread.join()
        out = {f"{k}_mib": round(v / 2**20, 1) for k, v in self.peaks.items()}
        out["process_max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        return out


# torch's FLOP counter has formulas for the CUDA attention kernels only; on CPU, SDPA runs
# `_scaled_dot_product_flash_attention_for_cpu`, which would count as zero. Count it as the two
# (forward) or four (backward) attention matmuls over the full query x key rectangle (the CPU
# kernel computes masked blocks too; a causal call skips about half).
def _attention_flops(q_shape, k_shape, is_causal: bool, matmuls: int) -> int:
    b, h, lq, d = q_shape
    lk = k_shape[-2]
    return int(matmuls * 2 * b * h * lq * lk * d * (0.5 if is_causal else 1.0))


def _sdpa_cpu(query, key, value, dropout_p=0.0, is_causal=False, *args, out_shape=None, **kwargs):
    return _attention_flops(query, key, is_causal, 2)


def _sdpa_cpu_backward(grad_out, query, key, value, out, logsumexp, dropout_p=0.0, is_causal=False,
                       *args, out_shape=None, **kwargs):
    return _attention_flops(query, key, is_causal, 4)


def flop_counter() -> FlopCounterMode:
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_cpu_backward
    return FlopCounterMode(display=False, custom_mapping=mapping)


class StepLog:
    """What the instrumented trainer saw: per-step times, FLOPs, tokens, evaluations."""

    def __init__(self, samples_per_step: int, count_flops: bool = True,
                 wall_budget_s: float | None = None, eval_at_steps: set[int] | None = None,
                 rss: RssSampler | None = None, min_steps: int = 0, lora_seed: int | None = None,
                 on_eval=None, target_f1: float | None = None):
        self.rss = rss
        # neither the time budget nor the target F1 can stop training before this step
        self.min_steps = min_steps
        # time to F1 (bench.levers --every): stop at the first evaluation from min_steps on
        # whose F1 reaches this
        self.target_f1 = target_f1
        self.lora_seed = lora_seed  # both sides: the same LoRA starting weights (same_lora_init)
        self.on_eval = on_eval  # extra scoring at each evaluation: on_eval(model) -> dict
        self.lora_init_checksum: float | None = None
        # sum of |A| per LoRA matrix, keyed by its name from `layers.` on: sides that adapt
        # different layers (method.top_k_layers) are compared on the matrices they share
        self.lora_init_by_matrix: dict[str, float] = {}
        self.trainable_parameters: int | None = None
        self.phase: str | None = None  # "train" or "eval" while the trainer is in one
        self.samples_per_step = samples_per_step
        self.count_flops = count_flops
        self.wall_budget_s = wall_budget_s
        self.eval_at_steps = eval_at_steps
        self.step_seconds: list[float] = []
        self.flops = 0
        self.tokens_computed = 0  # positions the model ran (padding and shared prefixes included)
        self.answer_tokens = 0  # supervised tokens (labels != -100)
        self.excluded = 0.0  # evaluation and checkpoint time inside the step clock
        self.evaluations: list[dict] = []
        self._t = None

    @property
    def train_seconds(self) -> float:
        return sum(self.step_seconds)

    def summary(self) -> dict:
        steps = len(self.step_seconds)
        samples = steps * self.samples_per_step
        secs = self.train_seconds
        ordered = sorted(self.step_seconds)
        return {
            "steps": steps, "samples": samples, "train_seconds": round(secs, 3),
            "samples_per_s": samples / secs if secs else 0.0,
            "answer_tokens": self.answer_tokens,
            "answer_tokens_per_s": self.answer_tokens / secs if secs else 0.0,
            "tokens_computed": self.tokens_computed,
            "tokens_computed_per_sample": self.tokens_computed / samples if samples else 0.0,
            "median_step_seconds": ordered[steps // 2] if steps else 0.0,
            "first_step_seconds": self.step_seconds[0] if steps else 0.0,
            "executed_flops": self.flops if self.count_flops else None,
            "executed_gflop_per_sample": self.flops / samples / 1e9 if samples and self.count_flops else None,
            "achieved_gflop_per_s": self.flops / secs / 1e9 if secs and self.count_flops else None,
            "evaluations": self.evaluations,
        }


def same_lora_init(model, seed: int, by_matrix: dict[str, float] | None = None) -> float:
    """Give every LoRA matrix a starting value that depends only on `seed` and the layer's name
    from `layers.` on (A: PEFT's own Kaiming-uniform rule, B: zeros), so the baseline and nerft
    start from identical adapters whatever each built in between. Returns a checksum (sum of
    |A|) that the report compares between sides; `by_matrix`, when given, receives each A's
    own sum of |A| under that name."""
    import math
    import zlib

    total = 0.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_A." not in name and ".lora_B." not in name:
                continue
            key = name[name.index("layers."):] if "layers." in name else name
            if ".lora_B." in name:
                p.zero_()
                continue
            g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
            w = torch.empty(p.shape, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g)
            p.copy_(w.to(p.dtype))
            total += float(w.abs().sum())
            if by_matrix is not None:
                by_matrix[key] = float(w.abs().sum())
    return total


def instrumented(trainer_cls, log: StepLog):
    """A subclass of `trainer_cls` that fills `log`; training itself is untouched."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            log._t, log.excluded, log.phase = time.perf_counter(), 0.0, "train"
            if log.rss is not None:
                log.rss.enter("train")

        def on_train_end(self, args, state, control, **kw):
            log.phase = None
            if log.rss is not None:
                log.rss.enter(None)

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            log.step_seconds.append(now - log._t - log.excluded)
            log._t, log.excluded = now, 0.0
            stop = state.global_step >= state.max_steps
            # Equal time: stop before a step that would end past the budget (each step is
            # predicted to take the mean step time so far), so nerft never gets more time.
            mean = log.train_seconds / len(log.step_seconds)
            if (log.wall_budget_s is not None and state.global_step >= log.min_steps
                    and log.train_seconds + mean > log.wall_budget_s):
                control.should_training_stop = stop = True
            if log.eval_at_steps is not None:
                control.should_evaluate = stop or state.global_step in log.eval_at_steps
            return control

    class Instrumented(trainer_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(Clock())
            if log.lora_seed is not None:
                log.lora_init_checksum = same_lora_init(self.model, log.lora_seed,
                                                        log.lora_init_by_matrix)
            log.trainable_parameters = sum(p.numel() for p in self.model.parameters()
                                           if p.requires_grad)

        def training_step(self, model, inputs, num_items_in_batch=None):
            log.tokens_computed += int(inputs["input_ids"].numel())
            log.answer_tokens += int((inputs["labels"] != -100).sum())
            if not log.count_flops:
                return super().training_step(model, inputs, num_items_in_batch)
            with flop_counter() as counter:
                loss = super().training_step(model, inputs, num_items_in_batch)
            log.flops += counter.get_total_flops()
            return loss

        def evaluate(self, *args, **kwargs):
            start = time.perf_counter()
            previous = log.rss.enter("eval") if log.rss is not None else None
            outer, log.phase = log.phase, "eval"
            try:
                metrics = super().evaluate(*args, **kwargs)
            finally:
                log.phase = outer
                if log.rss is not None:
                    log.rss.enter(previous)
            extra = {}
            if log.on_eval is not None and self.state.global_step >= log.min_steps:
                extra = {"common_reader": log.on_eval(self.model)}
            took = time.perf_counter() - start
            log.excluded += took
            log.evaluations.append({**extra,
                "step": self.state.global_step,
                "samples": self.state.global_step * log.samples_per_step,
                "train_seconds": round(log.train_seconds, 3), "eval_seconds": round(took, 3),
                **{k.removeprefix("eval_"): v for k, v in metrics.items()
                   if k in ("eval_f1", "eval_precision", "eval_recall", "eval_parse_rate")}})
            if (log.target_f1 is not None and self.state.global_step >= log.min_steps
                    and metrics.get("eval_f1", float("-inf")) >= log.target_f1):
                self.control.should_training_stop = True
            return metrics

        def _save_checkpoint(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return super()._save_checkpoint(*args, **kwargs)
            finally:
                log.excluded += time.perf_counter() - start

    Instrumented.__name__ = f"Instrumented{trainer_cls.__name__}"
    return Instrumented
