"""`nerft export`: a run's adapter with its task and model card, or a merged transformers folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console


def export(
    run: Path = typer.Argument(..., metavar="RUN", help="A `nerft train` run directory."),
    out: Path = typer.Option(..., "--out", help="New folder for the export (must not exist or be empty)."),
    merge: bool = typer.Option(False, "--merge", help="Write a plain transformers folder with the "
                               "adapter merged in (loads with AutoModelForCausalLM alone)."),
    dtype: str = typer.Option("auto", "--dtype", help="Merged weights dtype: auto (the base "
                              "model's), float32, bfloat16 or float16."),
    gguf: Optional[str] = typer.Option(None, "--gguf", help="Also write a GGUF with an Ollama "
                                       "Modelfile and a GBNF grammar; implies --merge unless "
                                       "--gguf-adapter. f16 or q8_0 (llama.cpp's Python converter), "
                                       "or q3_k_m, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k (llama-quantize, "
                                       "built once from the pinned llama.cpp source: needs cmake and "
                                       "a C++ compiler)."),
    gguf_adapter: bool = typer.Option(False, "--gguf-adapter", help="With --gguf: the base model "
                                      "as a GGUF of that type and the LoRA adapter as a GGUF of its "
                                      "own (an ADAPTER line in the Ollama Modelfile) instead of one merged GGUF."),
    probes: int = typer.Option(4, "--check-sentences", min=1,
                               help="Validation sentences the export's self-check decodes."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Run the Python code the model ships (its auto_map). "
        "Never read from a run's files: only this flag allows it."),
):
    """Export a trained run; merged exports check themselves against the run (exit 1 on mismatch).

    \b
    Examples:
      nerft export runs/demo-cpu --out exports/demo-adapter
      nerft export runs/demo-cpu --out exports/demo-merged --merge
      nerft export runs/demo-cpu --out exports/demo-gguf --gguf q8_0
      nerft export runs/demo-cpu --out exports/demo-q4 --gguf q4_k_m
      nerft export runs/demo-cpu --out exports/demo-lora-gguf --gguf f16 --gguf-adapter
    """
    from rich.markup import escape

    from nerft.cli.common import err
    from nerft.export.workflow import export_run

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the export prints its own steps
    # A bad run or model is an ExportError (exit 2); an export that fails its own check is an
    # ExportCheckFailed (exit 1: the export is wrong, not the input). `nerft.cli` reports both.
    result = export_run(run, out, merge=merge, dtype=dtype, probes=probes, gguf=gguf,
                        gguf_adapter=gguf_adapter, trust_remote_code=trust_remote_code,
                        log=lambda m: err.print(escape(m), highlight=False, soft_wrap=True))
    Console().print(f"[bold]exported[/] {result.kind} → {result.out} ({len(result.files)} files)",
                    highlight=False)
