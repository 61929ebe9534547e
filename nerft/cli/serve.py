"""`nerft serve`: the NER model over HTTP (JSON API, OpenAI-compatible chat, web page, metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def serve(
    run_or_model: List[str] = typer.Argument(
        ..., metavar="RUN_OR_MODEL...", help="A `nerft train` run, a `nerft export` folder, or a "
        "base model source (demo, hub id, .gguf) for zero-shot use. Several adapter runs of one "
        "base model share its weights in one process: requests pick one by name (`run` in "
        "/v1/ner, `model` in the OpenAI route); the first is the default."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; 0.0.0.0 exposes the "
                             "service to the network (set --api-key then)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="NERFT_API_KEY",
                                          help="Require this key on every route but /health "
                                               "(Bearer, X-API-Key, or Basic password)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated label names "
                                         "(default: the run's or export's)."),
    max_batch: Optional[int] = typer.Option(
        None, "--max-batch", min=1, help="Sentences per decode call (hf; default 16). vllm: the "
        "engine's max_num_seqs (default: vLLM's own)."),
    max_wait_ms: float = typer.Option(10, "--max-wait-ms", min=0, help="How long the oldest "
                                      "waiting request may wait for others to share its batch."),
    max_queue: int = typer.Option(256, "--max-queue", min=1, help="Sentences waiting at most; "
                                  "beyond it requests get 503 with Retry-After."),
    max_text_chars: int = typer.Option(2000, "--max-text-chars", min=1,
                                       help="Longest sentence accepted (413 beyond)."),
    max_texts: int = typer.Option(64, "--max-texts", min=1, help="Sentences per request (413 beyond)."),
    batching: bool = typer.Option(True, "--batching/--no-batching",
                                  help="Share decode calls between concurrent requests (vllm: "
                                  "--no-batching decodes one sequence at a time)."),
    backend: str = typer.Option("hf", "--backend", help="hf (transformers, CPU or GPU) or vllm "
                                "(a CUDA GPU and `pip install 'nerft[vllm]'`: vLLM's async "
                                "engine, grammar-constrained, LoRA adapters per run)."),
    gpu_memory: float = typer.Option(0.85, "--gpu-memory", min=0.05, max=0.99, help="vllm: the "
                                     "share of GPU memory vLLM may take."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
    log_requests: Optional[Path] = typer.Option(
        None, "--log-requests", metavar="FILE.jsonl", help="Opt-in: append every /v1/ner request "
        "and its answer (sentences, entities, request id, model, time) to this file."),
    feedback: Optional[Path] = typer.Option(
        None, "--feedback", metavar="FILE.jsonl", help="Opt-in: accept POST /v1/feedback and "
        "append the corrections here, as rows `nerft data prepare` reads."),
    log_max_mb: float = typer.Option(100, "--log-max-mb", min=0.001, help="Cap of each log file; "
                                     "at the cap logging stops (said once), serving goes on."),
    feedback_key: Optional[str] = typer.Option(
        None, "--feedback-key", envvar="NERFT_FEEDBACK_KEY", help="Require this key (or one of "
        "several, comma-separated: one per writer) on POST /v1/feedback; the API key alone then "
        "cannot write corrections."),
    max_request_chars: int = typer.Option(16_000, "--max-request-chars", min=1,
                                          help="Characters in one request, all texts together "
                                               "(413 beyond): the compute budget of a request."),
    request_timeout: float = typer.Option(120, "--request-timeout", min=0.1, help="Seconds a "
                                          "request may wait for its answers (504 beyond; its "
                                          "work is cancelled)."),
):
    """Serve a model: POST /v1/ner, POST /v1/chat/completions, GET / (web page), /metrics, /docs,
    /label-studio (Label Studio ML backend).

    \b
    Examples:
      nerft serve runs/demo-cpu
      nerft serve runs/demo-a runs/demo-b       # two adapter runs, one copy of the base model
      nerft serve exports/demo-merged --port 9000 --api-key "$KEY"
      nerft serve runs/demo-cpu --log-requests logs/requests.jsonl --feedback logs/feedback.jsonl
      curl -s localhost:8000/v1/ner -d '{"text": "张三在北京工作。"}' -H 'Content-Type: application/json'
    """
    from rich.markup import escape

    from nerft.cli.common import fail

    if backend not in ("hf", "vllm"):
        fail(f"--backend {backend!r}: choose hf or vllm")
    if backend == "hf":
        max_batch = max_batch or 16
    if backend == "vllm":
        from nerft.serve.vllm_backend import check_vllm

        check_vllm()  # VllmUnavailable, a NerftError, says what is missing
    refs = list(run_or_model)
    label_set = tuple(x.strip() for x in labels.split(",") if x.strip()) if labels else None
    if labels is not None and not label_set:
        fail("--labels is empty; give names such as 地点,人名,地理实体,组织")

    import uvicorn
    from transformers.utils import logging as hf_logging

    from nerft.serve.app import ServeSettings, serve_runs
    from nerft.serve.guard import LOOPBACK_NAMES

    hf_logging.disable_progress_bar()
    if threads:
        import torch

        torch.set_num_threads(threads)
    # An unloadable model, or runs that cannot share one (nerft.serve.engine.check_together),
    # is a NerftError, which `nerft.cli` reports in one line.
    engine = {}
    if backend == "vllm":
        from nerft.serve.vllm_backend import start_vllm

        runs, engine = start_vllm(refs, label_set, gpu_memory=gpu_memory,
                                  max_text_chars=max_text_chars,
                                  max_num_seqs=max_batch if batching else 1)
    else:
        from nerft.serve.engine import load_runs

        runs = load_runs(refs, label_set, max_batch=max_batch)
    settings = ServeSettings(model_name=runs[0].name, max_text_chars=max_text_chars, max_texts=max_texts,
                             max_batch=max_batch or 16, max_wait=max_wait_ms / 1000, max_queue=max_queue,
                             batching=batching, api_key=api_key or None, log_requests=log_requests,
                             feedback=feedback, log_max_bytes=int(log_max_mb * 2**20),
                             max_request_chars=max_request_chars, request_timeout=request_timeout,
                             feedback_keys=tuple(k.strip() for k in (feedback_key or "").split(",")
                                                 if k.strip()))
    if host in LOOPBACK_NAMES and not api_key:
        # Only this machine can connect, but a web page from elsewhere can rebind its name to
        # 127.0.0.1: answer only to the loopback names.
        settings.allowed_hosts = LOOPBACK_NAMES
    if host not in LOOPBACK_NAMES and not api_key:
        from rich.console import Console

        Console(stderr=True).print(f"[yellow]warning:[/] serving on {escape(host)} without "
                                   "--api-key: anyone who can reach this port can use the model",
                                   highlight=False)
    try:
        app = serve_runs(runs, settings, **engine)
    except OSError as e:  # a log file that cannot be opened for appending
        fail(f"cannot open the log file: {e}")
    # On SIGTERM uvicorn stops accepting, answers every open request, then runs the app's
    # shutdown, which lets the decode worker finish what is queued.
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=120)
