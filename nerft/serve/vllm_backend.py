"""`--backend vllm`: serving through vLLM's async engine on a CUDA GPU (`pip install 'nerft[vllm]'`,
in an environment of its own: vLLM pins its own torch and transformers).

Written against vLLM 0.19.1 (`vllm>=0.19.1`, the first release that runs on transformers 5):
`AsyncLLM.from_engine_args(AsyncEngineArgs(...))`, `generate(TokensPrompt, SamplingParams,
request_id, lora_request=LoRARequest)`, and grammars only through `structured_outputs`
(`SamplingParams(structured_outputs=StructuredOutputsParams(grammar=...))`, the guidance
backend: llguidance, which reads GBNF). The `guided_*` names of older releases are not used.

What each request gets, so that the answers are the hf backend's:
- the prompt as token ids, encoded by nerft (`encode_prompts`), not by vLLM's chat template;
- greedy decoding, at most `answer_token_budget(sentence)` tokens, the run's stop tokens;
- the answer grammar of its own sentence (`answer_grammar(task, sentence)`: the task's answer
  pieces and labels, entity texts that are substrings of the sentence), the GBNF form of the
  language nerft's own constrained decoder allows;
- the repeated-line rule (`RepeatedLineGuard`, the hf path's) applied as tokens arrive: when
  a line repeats more often than the rule allows, the answer is cut there and the request is
  aborted, as the hf decoder ends that row;
- the answer parsed by the task (`Task.parse_answer`), as `predict_rows` parses hf answers.

Weights: adapter runs are LoRA requests on the base model (`enable_lora`, one `LoRARequest` per
run, so `nerft serve A B` keeps one copy of the base weights). Adapters vLLM cannot load (DoRA,
`modules_to_save`, biases) are merged by nerft once into a cache folder, as are full and freeze
runs' own weights, which vLLM loads as they are; such a run is served alone.

vLLM does its own continuous batching: requests go straight to the engine, no nerft batcher;
`nerft serve --max-batch N` becomes the engine's `max_num_seqs` (vLLM's default when not given),
and `--no-batching` makes it 1.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import shutil
import uuid
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

from nerft.atomic import staged_folder
from nerft.config import is_tagger
from nerft.errors import NerftError
from nerft.export.grammar import answer_grammar
from nerft.infer.predict import Decoded
from nerft.infer.stopping import RepeatedLineGuard, answer_token_budget
from nerft.models.loader import DEFAULT_LABELS, ModelRef, describe
from nerft.serve.app import ServedRun
from nerft.serve.engine import ServeError, check_together, served_name
from nerft.task.chat import encode_prompts, stop_token_ids
from nerft.task.prompt import Task

VLLM_MIN_VERSION = "0.19.1"
GRAMMAR_BACKEND = "guidance"  # llguidance: reads the GBNF of nerft.export.grammar
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


class VllmUnavailable(NerftError):
    """vLLM cannot run here; the message says what to install (exit code 2)."""


def check_vllm() -> None:
    """One line saying what is missing: vLLM itself, a recent enough vLLM, or a CUDA GPU."""
    if importlib.util.find_spec("vllm") is None:
        raise VllmUnavailable("--backend vllm needs vLLM, which is not installed: in a separate "
                              "environment on a CUDA machine run `pip install 'nerft[vllm]'`, "
                              "or use --backend hf")
    from packaging.version import Version

    try:
        import vllm
    except Exception as e:  # a broken install (CUDA libraries, a torch it was not built for)
        raise VllmUnavailable(f"--backend vllm: vLLM is installed but does not import "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                              "reinstall it with `pip install 'nerft[vllm]'` or use --backend hf")
    found = vllm.__version__
    if Version(found) < Version(VLLM_MIN_VERSION):
        raise VllmUnavailable(f"--backend vllm needs vllm>={VLLM_MIN_VERSION} (its structured_outputs "
                              f"API), found {found}: pip install 'nerft[vllm]'")
    import torch

    if not torch.cuda.is_available():
        raise VllmUnavailable("--backend vllm needs a CUDA GPU and none is visible here; use "
                              "--backend hf")


# --- what the engine is started with: read from the runs' records, no vLLM needed ----------

@dataclass(frozen=True)
class VllmRun:
    name: str
    task: Task
    adapter: Path | None  # a LoRA adapter vLLM loads; None: the engine's own weights answer


@dataclass(frozen=True)
class VllmPlan:
    """The engine's weights, tokenizer and dtype, and the runs it serves."""

    model: str  # the folder vLLM loads (base model, full weights, or nerft's merged copy)
    tokenizer: str
    dtype: str
    runs: tuple[VllmRun, ...]
    max_lora_rank: int | None  # None: no adapters, LoRA off

    def engine_kwargs(self, *, gpu_memory: float = 0.85, max_text_chars: int = 2000,
                      max_num_seqs: int | None = None) -> dict:
        """AsyncEngineArgs' keyword arguments (vLLM 0.19.1 field names). `max_num_seqs`: the
        most sequences vLLM decodes at once (`nerft serve --max-batch`; 1 with --no-batching);
        None keeps vLLM's own default."""
        from vllm.config import StructuredOutputsConfig

        # The longest prompt (template + a sentence of up to 4 byte tokens a character) and its
        # answer budget, within what the model's positions allow.
        longest = 512 + 4 * max_text_chars + answer_token_budget("x" * max_text_chars)
        config = Path(self.model) / "config.json"
        if config.is_file():
            positions = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
            longest = min(longest, positions) if isinstance(positions, int) else longest
        kwargs = dict(model=self.model, tokenizer=self.tokenizer, dtype=self.dtype, seed=0,
                      max_model_len=longest,
                      gpu_memory_utilization=gpu_memory,
                      # sampling comes from nerft alone, not the model's generation_config.json
                      generation_config="vllm",
                      structured_outputs_config=StructuredOutputsConfig(backend=GRAMMAR_BACKEND),
                      enable_log_requests=False)
        if max_num_seqs is not None:
            kwargs["max_num_seqs"] = max_num_seqs
        if self.max_lora_rank is not None:
            kwargs.update(enable_lora=True, max_loras=len(self.runs),
                          max_lora_rank=self.max_lora_rank)
        return kwargs

    def lora_requests(self) -> dict[str, object]:
        """Each run's LoRARequest (ids from 1, in order), None for a run without an adapter."""
        from vllm.lora.request import LoRARequest

        return {run.name: None if run.adapter is None else
                LoRARequest(lora_name=run.name, lora_int_id=i, lora_path=str(run.adapter))
                for i, run in enumerate(self.runs, 1)}


def adapter_problem(adapter: Path) -> str | None:
    """Why vLLM cannot load this PEFT adapter as a LoRA (it would refuse it), or None."""
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        return f"a {config.get('peft_type')} adapter"
    if config.get("use_dora"):
        return "a DoRA adapter"
    if config.get("modules_to_save"):
        return "an adapter with modules_to_save"
    if config.get("bias", "none") != "none":
        return "an adapter with biases"
    return None


def lora_rank(adapter: Path) -> int:
    """The smallest max_lora_rank vLLM accepts that holds this adapter's rank."""
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    r = max([int(config.get("r", 8)), *map(int, (config.get("rank_pattern") or {}).values())])
    return next((x for x in LORA_RANKS if x >= r), r)


def _task(found: ModelRef, labels) -> Task:
    """The run's own task, or (a base model, or --labels) the given labels in its format."""
    if not labels and found.task is not None:
        return found.task
    return Task(tuple(labels or DEFAULT_LABELS), found.task.answer_format if found.task else "json")


def _dtype(found: ModelRef) -> str:
    return "bfloat16" if found.dtype == "auto" else found.dtype  # as the hf backend on a GPU


def _refuse_tagger(ref: str, found: ModelRef) -> None:
    """vLLM generates; merged, a tagging head's weights would load as a chat model and answer
    with whatever its untouched output layer writes."""
    if is_tagger(found.head):
        raise ServeError(f"{ref} has a tagging head (method.head tagger), which vLLM cannot run "
                         "(it only generates text); serve it with --backend hf")


def plan_vllm(refs: list[str], labels: tuple[str, ...] | None = None, *, merge=None) -> VllmPlan:
    """What to start vLLM with for these references. `merge(ref) -> folder` writes merged
    weights for an adapter vLLM cannot load (default: `merged_weights`)."""
    from nerft.models.base import resolve_model

    merge = merge or merged_weights
    if len(refs) > 1:
        if labels:
            raise ServeError("--labels applies to one served model; with several runs each "
                             "answers with its own labels")
        found = check_together(refs)
        for ref, one in zip(refs, found):
            _refuse_tagger(ref, one)
            problem = adapter_problem(one.adapter)
            if problem:
                raise ServeError(f"{ref} is {problem}, which vLLM cannot load as a LoRA; serve it "
                                 "alone (nerft merges it) or with --backend hf")
        base = str(resolve_model(found[0].weights))
        return VllmPlan(base, base, _dtype(found[0]),
                        tuple(VllmRun(served_name(r), one.task, one.adapter)
                              for r, one in zip(refs, found)),
                        max(lora_rank(one.adapter) for one in found))
    ref = refs[0]
    found = describe(ref)
    _refuse_tagger(ref, found)
    run = VllmRun(served_name(ref), _task(found, labels), None)
    if found.adapter is not None and adapter_problem(found.adapter) is None:
        base = str(resolve_model(found.weights))
        return VllmPlan(base, base, _dtype(found), (VllmRun(run.name, run.task, found.adapter),),
                        lora_rank(found.adapter))
    if found.adapter is not None:  # DoRA and the like: nerft merges, vLLM loads plain weights
        folder = str(merge(ref))
        return VllmPlan(folder, folder, _dtype(found), (run,), None)
    if found.tokenizer_folder is not None:  # full fine-tuning: the run's own weights
        return VllmPlan(found.weights, str(found.tokenizer_folder), _dtype(found), (run,), None)
    folder = str(resolve_model(found.weights))  # a merged export or a base model
    return VllmPlan(folder, folder, _dtype(found), (run,), None)


def merged_weights(ref: str) -> Path:
    """The adapter of `ref` merged into its base model, saved once in nerft's cache (keyed by
    the adapter's weights and base model) for vLLM to load."""
    from nerft.cache import cache_root
    from nerft.models.loader import load_model

    found = describe(ref)
    digest = hashlib.sha256(found.weights.encode())
    for name in sorted(p.name for p in found.adapter.iterdir() if p.is_file()):
        digest.update(name.encode() + (found.adapter / name).read_bytes())
    folder = cache_root() / "vllm-merged" / digest.hexdigest()[:24]
    if (folder / "config.json").is_file():
        return folder
    model, tokenizer, _ = load_model(ref, device="cpu")
    shutil.rmtree(folder, ignore_errors=True)  # what a killed earlier merge left half written
    with staged_folder(folder) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return folder


# --- one request per sentence ----------------------------------------------------------------

def sampling_params(task: Task, sentence: str, stop_ids) -> object:
    """Greedy, the sentence's token budget, the run's stop tokens, its answer grammar."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    return SamplingParams(temperature=0.0, max_tokens=answer_token_budget(sentence),
                          stop_token_ids=sorted(stop_ids), skip_special_tokens=True,
                          structured_outputs=StructuredOutputsParams(
                              grammar=answer_grammar(task, sentence)))


def run_decoder(engine, tokenizer, task: Task, lora_request, stop_ids: set[int]):
    """async decode(texts) -> [Decoded] for one run: one engine request per sentence, together."""
    from vllm import TokensPrompt

    async def one(index: int, text: str, prompt: list[int]) -> Decoded:
        guard = RepeatedLineGuard(tokenizer, text, task)
        ids: list[int] = []
        stream = engine.generate(TokensPrompt(prompt_token_ids=prompt),
                                 sampling_params(task, text, stop_ids),
                                 f"nerft-{uuid.uuid4().hex}", lora_request=lora_request)
        async with aclosing(stream):  # leaving early closes it: vLLM aborts the request
            async for output in stream:
                tokens = list(output.outputs[0].token_ids)
                cut = next((c for k in range(len(ids) + 1, len(tokens) + 1)
                            if (c := guard.cut_at(tokens[:k])) is not None), None)
                ids = tokens if cut is None else tokens[:cut]
                if cut is not None:
                    break
        ids = [t for t in ids if t not in stop_ids]
        answer = tokenizer.decode(ids, skip_special_tokens=True)
        return Decoded(str(index), text, answer, task.parse_answer(answer, text), ids, len(prompt))

    async def decode(texts: list[str]) -> list[Decoded]:
        prompts = encode_prompts(tokenizer, task, texts)
        return list(await asyncio.gather(*(one(i, t, p) for i, (t, p)
                                            in enumerate(zip(texts, prompts)))))

    return decode


def start_vllm(refs: list[str], labels: tuple[str, ...] | None = None, *,
               gpu_memory: float = 0.85, max_text_chars: int = 2000, plan: VllmPlan | None = None,
               max_num_seqs: int | None = None):
    """(runs, {"alive", "shutdown"}) for `nerft.serve.app.serve_runs`: vLLM's async engine with
    every run's LoRA request, and each run's async decode."""
    from transformers import AutoTokenizer, GenerationConfig
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    plan = plan or plan_vllm(refs, labels)
    tokenizer = AutoTokenizer.from_pretrained(plan.tokenizer)
    try:
        generation = GenerationConfig.from_pretrained(plan.model)
    except OSError:
        generation = None
    stop_ids = stop_token_ids(tokenizer, generation)
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(
        **plan.engine_kwargs(gpu_memory=gpu_memory, max_text_chars=max_text_chars,
                             max_num_seqs=max_num_seqs)))
    loras = plan.lora_requests()
    runs = [ServedRun(run.name, run.task, run_decoder(engine, tokenizer, run.task, loras[run.name],
                                                      stop_ids))
            for run in plan.runs]
    return runs, {"alive": lambda: not engine.errored, "shutdown": engine.shutdown}
