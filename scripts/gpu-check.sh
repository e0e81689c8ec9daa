#!/usr/bin/env bash
# The trainer on a GPU: tests/gpu (SFT steps, RL steps with the anchor, checkpoint and resume,
# the weight broadcast wire over NCCL,
# chunked log-probs; CUDA, bf16, NCCL with one rank) and the device-agnostic trainer unit tests.
# For a machine with an NVIDIA GPU, PyTorch preinstalled and no network: the packages it lacks
# travel in .whl/ (scripts/gpu-wheels.sh prepares them). Log: $OUT/gpu-check.log (or ./).
# Budget: well under 8 minutes (the tests take about a minute on the CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
log="${OUT:-.}/gpu-check.log"
{
    echo "gpu-check $(date -u +%FT%TZ) at $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    if ls .whl/*.whl > /dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/t1-site .whl/*.whl || { echo "gpu-check: wheel install failed"; exit 3; }
        export PYTHONPATH="/tmp/t1-site:$PWD"
    else
        export PYTHONPATH="$PWD"
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    python3 - <<'PY' || exit 4
import torch, deepspeed, transformers
print("torch", torch.__version__, "cuda", torch.version.cuda, "deepspeed", deepspeed.__version__,
      "transformers", transformers.__version__, "gpus", torch.cuda.device_count())
if not torch.cuda.is_available():
    raise SystemExit("gpu-check: no CUDA device: this check is for GPU machines")
PY
    PYTHONUNBUFFERED=1 timeout 450 python3 -m pytest -q -p no:cacheprovider --durations=10 \
        tests/gpu tests/unit/test_policy.py tests/unit/test_objective.py tests/unit/test_weight_wire.py
    rc=$?
    echo "gpu-check: pytest exit $rc"
    exit "$rc"
} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
