"""`python -m bench.load` runs end to end (tiny run, 2 s per client count) with no errors."""

import json

from bench.load import main, percentile


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (50, 95, 99)
    assert percentile([3.0], 99) == 3.0


def test_load_bench_on_the_tiny_run(tiny_lora_run, tmp_path):
    out = tmp_path / "load.json"
    rows = main([str(tiny_lora_run), "--clients", "1,4", "--seconds", "2", "--out", str(out),
                 "--serve-args", "--max-wait-ms 20"])
    assert [(r["batching"], r["clients"]) for r in rows] == [("on", 1), ("off", 1), ("on", 4), ("off", 4)]
    for r in rows:
        assert r["errors"] == 0 and r["requests"] > 0 and r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["decode_calls"] >= 1
    off4 = rows[3]
    assert off4["mean_batch"] == 1.0  # without batching every request is its own decode call
    assert json.loads(out.read_text(encoding="utf-8"))["rows"] == rows
