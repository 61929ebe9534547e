"""`python -m bench.load` runs end to end (tiny run, 2 s per client count) with no errors, and
its hostile row (issue 28): normal clients beside a hostile one see no error and keep their
latency."""

import json

from bench.load import main, percentile


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (50, 95, 99)
    assert percentile([3.0], 99) == 3.0


def test_load_bench_on_the_tiny_run(tiny_lora_run, tmp_path):
    out = tmp_path / "load.json"
    rows = main([str(tiny_lora_run), "--clients", "1,4", "--seconds", "2", "--out", str(out),
                 "--serve-args", "--max-wait-ms 20", "--hostile", "--hostile-clients", "4"])
    assert [(r["batching"], r["clients"], r.get("row")) for r in rows] == [
        ("on", 1, None), ("off", 1, None), ("on", 4, None), ("off", 4, None),
        ("on", 4, "calm"), ("on", 4, "hostile")]
    for r in rows:
        assert r["errors"] == 0 and r["requests"] > 0 and r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["decode_calls"] >= 1
    off4 = rows[3]
    assert off4["mean_batch"] == 1.0  # without batching every request is its own decode call
    assert json.loads(out.read_text(encoding="utf-8"))["rows"] == rows
    calm, hostile = rows[-2:]
    assert (calm["row"], hostile["row"]) == ("calm", "hostile")
    assert hostile["errors"] == 0 and hostile["requests"] > 0
    seen = hostile["hostile"]
    assert set(seen) == {"feedback_flood", "chunked_oversized", "lone_surrogate", "64x2000_chars"}
    # Refused at once; a server that closes the connection before a big upload ends may reach
    # the client as a reset instead of the 413.
    for kind, refusal in [("feedback_flood", "413"), ("chunked_oversized", "413"),
                          ("lone_surrogate", "422"), ("64x2000_chars", "413")]:
        assert refusal in seen[kind] and set(seen[kind]) <= {refusal, "ConnectionError"}, seen
    assert hostile["server_rss_peak_mb"] > 0
    assert hostile["server_rss_peak_mb"] <= hostile["rss_bound_mb"]
    # The bench's own criterion is 3x (BENCHMARKS.md); rows of 2 s on a shared 2-core machine
    # are noisier, and a frozen service would be far beyond either.
    assert hostile["p99_vs_calm"] <= 6, (calm, hostile)
