"""Real servers for the serve tests: `nerft serve` in a subprocess on a free loopback port."""

import pytest

from bench.live import Server, chromium_driver

API_KEY = "test-key-7f3a"


@pytest.fixture(scope="session")
def start_server(tiny_lora_run, tmp_path_factory):
    started = []

    def start(args: list[str], env: dict | None = None) -> Server:
        log = tmp_path_factory.mktemp("server") / "server.log"
        # A 2-layer model: more threads only add overhead.
        server = Server(tiny_lora_run, args, log, {"OMP_NUM_THREADS": "1", **(env or {})})
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread while a module decodes in-process: a 2-layer model gains nothing
    from more, they only add synchronisation."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEY


@pytest.fixture(scope="session")
def server(start_server):
    """No API key; the oldest request waits up to 100 ms for others to share its batch."""
    return start_server(["--max-wait-ms", "100", "--max-batch", "8", "--max-text-chars", "200",
                         "--max-texts", "4"])


FEEDBACK_KEYS = ("alice-feedback-key", "bob-feedback-key")


@pytest.fixture(scope="session")
def keyed_server(start_server, tmp_path_factory):
    """API key from the environment; at most 2 sentences queued, one request per decode;
    corrections (to `.feedback_log`) need one of FEEDBACK_KEYS."""
    log = tmp_path_factory.mktemp("keyed-logs") / "keyed.jsonl"
    server = start_server(["--max-queue", "2", "--no-batching", "--feedback", str(log),
                           "--feedback-key", ",".join(FEEDBACK_KEYS)], env={"NERFT_API_KEY": API_KEY})
    server.feedback_log = log
    return server


# The web page in a real headless Chromium (Debian's `chromium` + `chromium-driver`).
@pytest.fixture(scope="session")
def browser():
    try:
        driver = chromium_driver()
    except RuntimeError as e:
        pytest.fail(str(e))
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def second_lora_run(tiny_lora_run, tmp_path_factory):
    """Another LoRA run of the same tiny base model: tiny_lora_run's folder with its own adapter
    weights (B drawn again, larger), so the two runs answer differently."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    run = tmp_path_factory.mktemp("runs") / "tiny-run-b"
    shutil.copytree(tiny_lora_run, run)
    weights = run / "best" / "adapter_model.safetensors"
    tensors = load_file(weights)
    generator = torch.Generator().manual_seed(1)
    for name, tensor in tensors.items():
        if "lora_B" in name:
            tensors[name] = torch.randn(tensor.shape, generator=generator) * 0.2
    save_file(tensors, weights)
    return run


@pytest.fixture(scope="session")
def two_run_server(start_server, second_lora_run, tmp_path_factory):
    """`nerft serve RUN RUN_B --feedback`: two adapter runs of the tiny model in one server."""
    log = tmp_path_factory.mktemp("two-runs") / "feedback.jsonl"
    server = start_server([str(second_lora_run), "--max-wait-ms", "50", "--feedback", str(log)])
    server.feedback_log = log
    return server
