"""Install the ``bench`` extra (TRL and what it needs) into this venv on first use.

The pins come from ``pyproject.toml`` (``[project.optional-dependencies] bench``). The install
must not move torch, transformers or numpy: a constraints file pins them to the installed
versions, a ``pip install --dry-run --report`` is checked first, and the versions are checked
again afterwards.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTECTED = ("torch", "transformers", "numpy")


def bench_pins() -> list[str]:
    data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return list(data["project"]["optional-dependencies"]["bench"])


def _canon(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def ensure_trl() -> None:
    try:
        import trl  # noqa: F401
        return
    except ImportError:
        pass
    pins = bench_pins()
    before = {p: md.version(p) for p in PROTECTED}
    pip = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check"]
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("".join(f"{p}=={v}\n" for p, v in before.items()))
        report = Path(tmp) / "report.json"
        print(f"[bench] `import trl` failed: installing the bench extra {pins} with "
              f"{sys.executable} -m pip, constrained to {before}", flush=True)
        print("[bench] dry run first: pip install --dry-run --report ...", flush=True)
        subprocess.run(pip + ["--dry-run", "--quiet", "--report", str(report), "-c", str(constraints),
                              *pins], check=True)
        planned = {_canon(x["metadata"]["name"]): x["metadata"]["version"]
                   for x in json.loads(report.read_text())["install"]}
        moved = {p: planned[p] for p in PROTECTED if p in planned}
        if moved:
            raise SystemExit(f"[bench] refusing to install: it would change {moved} "
                             f"(installed {before})")
        print(f"[bench] will install: {', '.join(f'{k}=={v}' for k, v in sorted(planned.items()))}",
              flush=True)
        subprocess.run(pip + ["--quiet", "-c", str(constraints), *pins], check=True)
    after = {p: md.version(p) for p in PROTECTED}
    if after != before:
        raise SystemExit(f"[bench] the install changed protected packages: {before} -> {after}")
    importlib.invalidate_caches()
    import trl  # noqa: F401

    print(f"[bench] installed trl {md.version('trl')}, accelerate {md.version('accelerate')}, "
          f"datasets {md.version('datasets')}; torch/transformers/numpy unchanged", flush=True)


if __name__ == "__main__":
    ensure_trl()
