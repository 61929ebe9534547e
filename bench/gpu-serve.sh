#!/usr/bin/env bash
# GPU serving check (issue 30): one demo-recipe run served with --backend vllm and --backend hf;
# the same 64 sentences must get identical entities from both; then sentences/s and p50/p99
# latency at 1 and 32 clients for each. Exits 1 when the backends disagree.
#
#   bash bench/gpu-serve.sh [RUN]              # CUDA machine, vLLM installed (pip install 'nerft[vllm]')
#   bash bench/gpu-serve.sh RUN --cpu-smoke    # CPU: hf side only, short rows, and the one-line
#                                              # refusal of --backend vllm (tested in CI)
#   PYTHON=/path/to/python SENTENCES=test.jsonl bash bench/gpu-serve.sh RUN
#
# Without RUN it trains one first with the demo recipe (`nerft demo --out runs/gpu-serve-demo`,
# which needs the demo model and its MSRA slice cached: NERFT_CACHE). Writes $OUT/gpu-serve.json
# when $OUT is set (the device tool), else bench/results/gpu-serve.json.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
RUN="${1:-}"
[[ $# -gt 0 ]] && shift
if [[ -z "$RUN" || "$RUN" == --* ]]; then
  [[ "$RUN" == --* ]] && set -- "$RUN" "$@"
  RUN=runs/gpu-serve-demo/run
  [[ -d "$RUN" ]] || "$PYTHON" -m nerft demo --out runs/gpu-serve-demo
fi
ARGS=(--out "${OUT:+$OUT/gpu-serve.json}")
[[ -n "${OUT:-}" ]] || ARGS=()
[[ -n "${SENTENCES:-}" ]] && ARGS+=(--sentences "$SENTENCES")
exec "$PYTHON" -m bench.serve_backends "$RUN" "${ARGS[@]}" "$@"
