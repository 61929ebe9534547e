"""GGUF for llama.cpp / Ollama: llama.cpp's own converters and quantizer (from the pinned
distribution, `nerft.export.llama_cpp`), an Ollama Modelfile, a GBNF grammar, and the reloads
the export checks itself with.

Two shapes: the merged model in one GGUF (`model-TYPE.gguf`), or the base model's GGUF
(`base-TYPE.gguf`) with the LoRA adapter in a GGUF of its own (`adapter-f16.gguf`, the
Modelfile's `ADAPTER` line). Types: f16 and q8_0 come from the Python converter; the k-quants
from llama-quantize, which nerft builds from the wheel's llama.cpp source (see llama_cpp.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from nerft.export import ExportCheckFailed, ExportError
from nerft.export.grammar import answer_grammar
from nerft.export.llama_cpp import scripts_dir, tool
from nerft.export_dir import ExportDir
from nerft.task.prompt import Task, user_message

CONVERTER_TYPES = ("f16", "q8_0")  # written by convert_hf_to_gguf.py itself
# llama-quantize's k-quants (its names, lower case). Types below 3 bits are not offered: they
# change a small model's answers outright, and the export check would refuse them anyway.
K_QUANTS = ("q3_k_m", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
GGUF_TYPES = CONVERTER_TYPES + K_QUANTS
ADAPTER_TYPE = "f16"  # the LoRA GGUF: small either way, so kept at 16 bits


def check_type(outtype: str) -> None:
    if outtype not in GGUF_TYPES:
        raise ExportError(f"--gguf {outtype!r}: choose one of {', '.join(GGUF_TYPES)} ({' and '.join(CONVERTER_TYPES)} "
                          "by llama.cpp's Python converter, the k-quants by its llama-quantize)")


def _run_script(args: list[str], what: str) -> None:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
        raise ExportError(f"llama.cpp's {what} failed: {lines[-1]}")


def convert(model_dir: Path, out_file: Path, outtype: str, log=lambda message: None) -> Path:
    """A transformers folder (merged weights, or a base model) as one GGUF of `outtype`."""
    check_type(outtype)
    script = str(scripts_dir() / "convert_hf_to_gguf.py")
    if outtype in CONVERTER_TYPES:
        _run_script([script, str(model_dir), "--outfile", str(out_file), "--outtype", outtype],
                    "convert_hf_to_gguf.py")
    else:
        quantize = tool("llama-quantize", f"--gguf {outtype}", log)  # before the slow conversion
        with tempfile.TemporaryDirectory(prefix="nerft-gguf-", dir=out_file.parent) as tmp:
            full = Path(tmp) / "unquantized-f16.gguf"  # a temporary input, not part of the export
            _run_script([script, str(model_dir), "--outfile", str(full), "--outtype", "f16"],
                        "convert_hf_to_gguf.py")
            log(f"quantizing to {outtype} with llama-quantize")
            done = subprocess.run([str(quantize), str(full), str(out_file), outtype.upper(),
                                   str(os.cpu_count() or 1)], capture_output=True, text=True)
            if done.returncode != 0:
                lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
                raise ExportError(f"llama.cpp's llama-quantize {outtype} failed: {lines[-1]}")
    if not out_file.is_file():
        raise ExportError(f"llama.cpp wrote no {out_file}")
    return out_file


def check_adapter_convertible(adapter_dir: Path) -> None:
    """llama.cpp applies a LoRA as alpha/r × B·A on the named weights, nothing else: refuse, in
    one line, adapters it would apply differently."""
    config_file = Path(adapter_dir) / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    problems = [why for key, why in (
        ("use_dora", "DoRA (its magnitude vectors have no GGUF form)"),
        ("use_rslora", "rsLoRA (scaled by alpha/√r, llama.cpp scales by alpha/r)"),
        ("rank_pattern", "per-module ranks"), ("alpha_pattern", "per-module alphas"),
        ("modules_to_save", "fully trained modules besides the LoRA")) if config.get(key)]
    if config.get("peft_type", "LORA") != "LORA":
        problems.insert(0, f"a {config.get('peft_type')} adapter, not LoRA")
    if problems:
        raise ExportError(f"{config_file}: --gguf-adapter needs a plain LoRA adapter, this one has "
                          f"{'; '.join(problems)}; export the merged GGUF instead (--gguf without "
                          "--gguf-adapter)")


def convert_adapter(adapter_dir: Path, base_dir: Path, out_file: Path) -> Path:
    """The PEFT LoRA adapter as a GGUF LoRA (llama.cpp's convert_lora_to_gguf.py)."""
    check_adapter_convertible(adapter_dir)
    _run_script([str(scripts_dir() / "convert_lora_to_gguf.py"), "--base", str(base_dir),
                 "--outfile", str(out_file), "--outtype", ADAPTER_TYPE, str(adapter_dir)],
                "convert_lora_to_gguf.py")
    if not out_file.is_file():
        raise ExportError(f"llama.cpp wrote no {out_file}")
    return out_file


def modelfile(gguf_name: str, task: Task, stop_tokens: list[str], num_predict: int,
              budget_note: str, adapter_name: str | None = None) -> str:
    """An Ollama Modelfile that prompts exactly like nerft: the user sends the bare sentence.

    `num_predict` is nerft's answer budget for the longest sentence the note names; Ollama
    takes one number per model, so longer sentences need it per request."""
    system = task.system_prompt.replace('"""', '\\"\\"\\"')
    lines = [f"FROM ./{gguf_name}"]
    if adapter_name:
        lines.append(f"ADAPTER ./{adapter_name}")
    lines += ['TEMPLATE """<|im_start|>system\n{{ .System }}<|im_end|>\n<|im_start|>user\n'
              + user_message("{{ .Prompt }}") + '<|im_end|>\n<|im_start|>assistant\n"""',
              f'SYSTEM """{system}"""']
    lines += [f'PARAMETER stop "{token}"' for token in stop_tokens]
    lines += ["PARAMETER temperature 0",
              f"# nerft's answer budget is 48 + 6 tokens per character of the sentence: {budget_note}.",
              "# For a longer sentence send options.num_predict = 48 + 6 * its length with the request.",
              f"PARAMETER num_predict {num_predict}"]
    return "\n".join(lines) + "\n"


def load_gguf(gguf: Path):
    """(model, tokenizer) from the GGUF alone, dequantised to float32 by transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _one_parse_per_file():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
    return model.eval(), tokenizer


@contextmanager
def _one_parse_per_file():
    """transformers reads a GGUF with gguf-py's `GGUFReader` once for the tokenizer, once for the
    model's config and once for its weights, and each read parses the whole metadata in Python
    (Qwen's 151k tokens and merges: about 19 s a read on one core, three quarters of an export's
    check). Inside this block a file is parsed once and that reader is handed out again (its
    tensors are memory-mapped, read-only); transformers imports the class at call time."""
    import gguf

    original = gguf.GGUFReader
    parsed: dict[tuple[str, int, int, str], object] = {}

    def reader(path, mode="r"):
        stat = Path(path).stat()
        key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, mode)
        if key not in parsed:
            parsed[key] = original(path, mode)
        return parsed[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def tensor_types(gguf: Path) -> dict[str, str]:
    """{tensor name: GGML type name} of a GGUF, read with gguf-py."""
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(gguf).tensors}


def apply_adapter_gguf(base_model, adapter_gguf: Path):
    """The base model with the GGUF LoRA applied as llama.cpp applies it (alpha from the GGUF,
    r from its tensors, on the modules its tensor names map to): a PeftModel for the check.

    Every tensor of the GGUF must land on a LoRA weight and every LoRA weight must get one."""
    import torch
    from gguf import GGUFReader
    from peft import LoraConfig, get_peft_model
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    reader = GGUFReader(adapter_gguf)

    def field(key):
        found = reader.get_field(key)
        return None if found is None else found.contents()

    if field("general.type") != "adapter" or field("adapter.type") != "lora":
        raise ExportCheckFailed(f"{adapter_gguf}: not a GGUF LoRA adapter (general.type "
                                f"{field('general.type')!r}, adapter.type {field('adapter.type')!r})")
    alpha = float(field("adapter.lora.alpha"))
    hf_names = get_gguf_hf_weights_map(base_model, TensorProcessor())  # {gguf name: hf name}
    weights: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        stem, part = t.name.rsplit(".", 1)
        if part not in ("lora_a", "lora_b") or stem not in hf_names:
            raise ExportCheckFailed(f"{adapter_gguf}: tensor {t.name} maps to no weight of the base model")
        module = hf_names[stem].removesuffix(".weight")
        weights[f"{module}.lora_{part[-1].upper()}"] = torch.from_numpy(t.data.astype("float32"))
    modules = sorted({name.rsplit(".", 1)[0] for name in weights})
    ranks = {weights[f"{m}.lora_A"].shape[0] for m in modules if f"{m}.lora_A" in weights}
    if len(ranks) != 1:
        raise ExportCheckFailed(f"{adapter_gguf}: LoRA ranks {sorted(ranks)}, expected one")
    rank = ranks.pop()
    model = get_peft_model(base_model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules,
                                                  lora_dropout=0.0, bias="none"))
    loaded = set()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                module, part = name.removeprefix("base_model.model.").split(".lora_")
                key = f"{module}.lora_{part[0]}"
                if key not in weights or weights[key].shape != param.shape:
                    raise ExportCheckFailed(f"{adapter_gguf}: no tensor of shape "
                                            f"{tuple(param.shape)} for {key}")
                param.copy_(weights[key])
                loaded.add(key)
    if loaded != set(weights):
        raise ExportCheckFailed(f"{adapter_gguf}: tensors {sorted(set(weights) - loaded)[:3]} were not applied")
    return model.eval()


def write_ollama_files(export: ExportDir, task: Task, stop_tokens: list[str], gguf: Path,
                       num_predict: int, budget_note: str, adapter: Path | None = None) -> None:
    """The Ollama Modelfile and the GBNF grammar beside the GGUF files."""
    export.write_modelfile(modelfile(gguf.name, task, stop_tokens, num_predict, budget_note,
                                     adapter.name if adapter else None))
    export.write_grammar(answer_grammar(task))
