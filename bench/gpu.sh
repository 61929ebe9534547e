#!/usr/bin/env bash
# Training and generation speed on one GPU: the worked example's recipe vs nerft's, on
# Qwen2-1.5B-Instruct's architecture with random weights, plus nerft with the bench.levers levers
# (LoRA dropout 0; dropout 0 on the top half of the blocks; dropout 0 with compact answers).
# Offline, a few minutes on an H100.
#
#   bash bench/gpu.sh                 # on the GPU machine; writes $OUT/gpu.json (or bench/results/)
#   bash bench/gpu.sh --cpu-smoke     # tiny config on CPU: checks the script itself (tested in CI)
#   PYTHON=/path/to/python bash bench/gpu.sh
#
# Needs torch (CUDA), transformers and peft; flash_attention_2 is tried only if flash_attn imports.
# No tokenizer is needed: training rows are synthetic token ids with the lengths of the ccfbdci
# task (a 110-token shared system prompt, sentences ~20 tokens, answers ~15 tokens, see
# SHAPES), so the numbers are speed only, never quality.
#
# Baseline: LoRA r8/a32/d0.1 on all projections, gradient checkpointing, micro-batch 4 padded
#   rows x accumulation 4, the model's own loss over the full vocabulary (HF loss).
# nerft: the same LoRA, no checkpointing, micro-batch 16 packed into one row by nerft's own
#   `PackedCollator("shared_prefix")`, loss from nerft's `answer_only_loss` (logits only where
#   a label is). Both: bf16 weights, SDPA, torch AdamW lr 1e-4, the same 16 rows per step.
# Figures: tokens/s counts each sample's own tokens (prompt + answer, no padding, prefix counted
#   per sample) so both sides count the same work; MFU = 6 x non-embedding params x those
#   tokens / time / peak (the usual convention; it over-counts LoRA, whose backward needs no
#   weight gradients); HFU = FLOPs actually executed (torch FlopCounterMode over one step,
#   recompute included) / time / peak. Peak: 989 TFLOP/s dense bf16 (H100 SXM).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" - "$@" <<'PY'
import argparse, datetime, json, os, random, sys, time
from pathlib import Path

import torch

p = argparse.ArgumentParser()
p.add_argument("--cpu-smoke", action="store_true", default=os.environ.get("NERFT_GPU_SMOKE") == "1")
p.add_argument("--out", type=Path, default=None)
p.add_argument("--steps", type=int, default=None, help="timed optimizer steps per side")
args = p.parse_args()
smoke = args.cpu_smoke
if not smoke and not torch.cuda.is_available():
    sys.exit("no CUDA device: run with --cpu-smoke to check the script on CPU")
device = "cpu" if smoke else "cuda"
dtype = torch.float32 if smoke else torch.bfloat16
PEAK = 989e12  # H100 SXM dense bf16 (H200: the same compute)

from transformers import Qwen2Config, Qwen2ForCausalLM
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode
from nerft.train.collate import PackedCollator, answer_only_loss
from nerft.train.encode import IGNORE, Encoded

# Qwen2-1.5B-Instruct's config.json (the values that shape compute and memory).
QWEN2_15B = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, intermediate_size=8960, vocab_size=151936,
                 rope_theta=1_000_000.0, max_position_embeddings=32768,
                 tie_word_embeddings=True, rms_norm_eps=1e-6, hidden_act="silu",
                 bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)
TINY = dict(QWEN2_15B, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=128, vocab_size=8192,
            bos_token_id=8000, eos_token_id=8001, pad_token_id=8000)
SHAPES = dict(prefix=110, sentence_mean=20, sentence_sd=8, answer_mean=15, answer_sd=8)
PAD, EOT = (8000, 8001) if smoke else (151643, 151645)
STEPS = args.steps or (2 if smoke else 10)
WARMUP = 1 if smoke else 3
SAMPLES = 16
# data.answer_format=compact: its answers' tokens per sample over JSON lines', measured by
# bench.levers on the demo model and ccfbdci (15.3 against 26.5, BENCHMARKS.md)
COMPACT_ANSWER_SHARE = 15.3 / 26.5
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def attn_impls():
    impls = ["sdpa"]
    if not smoke:
        try:
            import flash_attn  # noqa: F401
            impls.append("flash_attention_2")
        except Exception:
            pass
    return impls


def rows(n, seed):
    """Synthetic samples: (prompt ids, answer ids); one shared 110-token system prompt."""
    rng = random.Random(seed)
    vocab = (TINY if smoke else QWEN2_15B)["vocab_size"] - 300
    prefix = [rng.randrange(vocab) for _ in range(SHAPES["prefix"])]
    out = []
    for _ in range(n):
        s = max(3, min(80, round(rng.gauss(SHAPES["sentence_mean"], SHAPES["sentence_sd"]))))
        a = max(3, min(80, round(rng.gauss(SHAPES["answer_mean"], SHAPES["answer_sd"]))))
        out.append((prefix + [rng.randrange(vocab) for _ in range(s)], [rng.randrange(vocab) for _ in range(a)]))
    return out


def build(attn, dropout=0.1, top_k=None):
    torch.manual_seed(0)
    config = Qwen2Config(**(TINY if smoke else QWEN2_15B))
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.set_attn_implementation(attn)
    model.config.use_cache = False
    n_params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    n = config.num_hidden_layers  # top_k: LoRA on the top k blocks only (method.top_k_layers)
    lora = LoraConfig(r=8, lora_alpha=32, lora_dropout=dropout, target_modules=PROJ, task_type="CAUSAL_LM",
                      layers_to_transform=list(range(n - top_k, n)) if top_k else None)
    return model, n_params, lora


def baseline_batches(step_rows):
    """4 micro-batches of 4 right-padded rows; answer closed by PAD, as the worked example does."""
    out = []
    for i in range(0, len(step_rows), 4):
        chunk = step_rows[i:i + 4]
        seqs = [(pr + an + [PAD], [IGNORE] * len(pr) + an + [PAD]) for pr, an in chunk]
        width = max(len(s) for s, _ in seqs)
        ids = torch.full((len(seqs), width), PAD)
        labels = torch.full((len(seqs), width), IGNORE)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, (s, l) in enumerate(seqs):
            ids[r, :len(s)], labels[r, :len(s)], mask[r, :len(s)] = torch.tensor(s), torch.tensor(l), 1
        out.append({"input_ids": ids, "labels": labels, "attention_mask": mask})
    return out


def nerft_batches(step_rows, layout):
    enc = [Encoded(str(i), pr + an + [EOT], [IGNORE] * len(pr) + an + [EOT], len(pr))
           for i, (pr, an) in enumerate(step_rows)]
    return [PackedCollator(layout, pad_id=PAD, mask_dtype=dtype)(enc)]


def run_side(name, attn, make_batches, loss_fn, checkpointing, data, dropout=0.1, top_k=None):
    model, n_params, lora = build(attn, dropout, top_k)
    if checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(model, lora)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    steps = [make_batches(data[i * SAMPLES:(i + 1) * SAMPLES]) for i in range(WARMUP + STEPS)]

    def one_step(batches):
        for b in batches:
            b = {k: v.to(device) for k, v in b.items()}
            loss_fn(model, b, len(batches)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for b in steps[:WARMUP]:
        one_step(b)
    sync()
    start = time.perf_counter()
    for b in steps[WARMUP:]:
        one_step(b)
    sync()
    secs = (time.perf_counter() - start) / STEPS
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    with FlopCounterMode(display=False) as counter:
        one_step(steps[WARMUP])
    timed = data[WARMUP * SAMPLES:(WARMUP + STEPS) * SAMPLES]
    tokens = sum(len(pr) + len(an) + 1 for pr, an in timed) / STEPS
    answer = sum(len(an) + 1 for _, an in timed) / STEPS
    del model, opt
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"side": name, "attn": attn, "seconds_per_step": secs, "samples_per_s": SAMPLES / secs,
            "tokens_per_s": tokens / secs, "answer_tokens_per_s": answer / secs,
            "peak_memory_gib": peak_mem, "mfu": 6 * n_params * tokens / secs / PEAK,
            "hfu": counter.get_total_flops() / secs / PEAK, "executed_tflop_per_step": counter.get_total_flops() / 1e12}


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


def hf_loss(model, b, accum):
    return model(**b).loss / accum


def nerft_loss(model, b, accum):
    loss, _ = answer_only_loss(model, b, None)
    return loss


@torch.no_grad()
def generation(batch, new_tokens, attn="sdpa"):
    model, _, _ = build(attn)
    model.eval()
    model.config.use_cache = True
    prompts = [pr for pr, _ in rows(batch, seed=7)]
    width = max(map(len, prompts))
    ids = torch.full((batch, width), PAD)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for r, pr in enumerate(prompts):  # left padding for generation
        ids[r, width - len(pr):], mask[r, width - len(pr):] = torch.tensor(pr), 1
    ids, mask = ids.to(device), mask.to(device)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=PAD)
    model.generate(input_ids=ids[:1], attention_mask=mask[:1], **dict(kw, max_new_tokens=2, min_new_tokens=2))
    sync()
    start = time.perf_counter()
    model.generate(input_ids=ids, attention_mask=mask, **kw)
    sync()
    batched = batch * new_tokens / (time.perf_counter() - start)
    start = time.perf_counter()
    singles = min(batch, 4)
    for r in range(singles):
        row = mask[r].bool()
        model.generate(input_ids=ids[r:r + 1, row], **kw)
    sync()
    single = singles * new_tokens / (time.perf_counter() - start)
    del model
    return {"batch": batch, "new_tokens": new_tokens, "batched_tokens_per_s": batched,
            "one_at_a_time_tokens_per_s": single, "note": "HF generate, random weights, forced length"}


t0 = time.perf_counter()
data = rows(SAMPLES * (WARMUP + STEPS), seed=1)
results = []
half = (TINY if smoke else QWEN2_15B)["num_hidden_layers"] // 2
for attn in attn_impls():
    before = len(results)
    if attn == "sdpa":
        shared = lambda r: nerft_batches(r, "shared_prefix")
        results.append(run_side("baseline", attn, baseline_batches, hf_loss, True, data))
        results.append(run_side("nerft", attn, shared, nerft_loss, False, data))
        # the levers of bench.levers (issue 16): LoRA dropout 0, then also the top half of the blocks
        results.append(run_side("nerft-dropout-0", attn, shared, nerft_loss, False, data, dropout=0.0))
        results.append(run_side(f"nerft-dropout-0-top-{half}", attn, shared, nerft_loss, False, data,
                                dropout=0.0, top_k=half))
        # the same sentences with each answer shortened to compact's measured share of tokens
        compact = [(pr, an[:max(2, round(len(an) * COMPACT_ANSWER_SHARE))]) for pr, an in data]
        results.append(run_side("nerft-dropout-0-compact", attn, shared, nerft_loss, False, compact,
                                dropout=0.0))
    else:  # FlashAttention takes no 4D mask: nerft's flat layout (varlen from position ids)
        results.append(run_side("nerft-flat", attn, lambda r: nerft_batches(r, "flat"), nerft_loss, False, data))
    print(json.dumps(results[before:], indent=1), flush=True)
gen = generation(4 if smoke else 64, 4 if smoke else 64)
base = next(r for r in results if r["side"] == "baseline")
ours = next(r for r in results if r["side"] == "nerft")
out = {
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke)",
    "smoke": smoke, "torch": torch.__version__,
    "transformers": __import__("transformers").__version__, "peft": __import__("peft").__version__,
    "model": "random Qwen2 " + ("tiny" if smoke else "1.5B (Qwen2-1.5B-Instruct config)"),
    "dtype": str(dtype), "steps": STEPS, "warmup": WARMUP, "samples_per_step": SAMPLES, "shapes": SHAPES,
    "train": results, "generation": gen,
    "speedup_tokens_per_s": ours["tokens_per_s"] / base["tokens_per_s"],
    "seconds": time.perf_counter() - t0,
}
target = args.out or (Path(os.environ["OUT"]) / "gpu.json" if os.environ.get("OUT")
                      else Path("bench/results") / ("gpu-smoke.json" if smoke else "gpu.json"))
target.parent.mkdir(parents=True, exist_ok=True)
target.write_text(json.dumps(out, indent=1))
print(json.dumps({k: out[k] for k in ("device", "speedup_tokens_per_s", "generation", "seconds")}, indent=1))
print(f"wrote {target}")
PY
