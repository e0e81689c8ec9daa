"""The seam: how one check's interpreter is started. A backend turns the harness's command into
the command that runs it isolated, and says whether it can work on this host."""

from __future__ import annotations

import os
import stat
from abc import ABC, abstractmethod
from pathlib import Path

NOBODY = 65534


class Isolation(ABC):
    name: str  # reported with every verdict: which level actually ran

    @abstractmethod
    def command(self, argv: list[str]) -> tuple[list[str], list[int]]:
        """``argv`` (an interpreter and its arguments) as this backend runs it, and descriptors
        the command must inherit (the caller closes them once it has started)."""

    def popen_kwargs(self) -> dict:
        """How the verifier starts the command: as root, as ``nobody`` (root is exempt from the
        process limit, and the sandbox must not hold the verifier's own rights)."""
        if os.geteuid() == 0:
            return {"user": NOBODY, "group": NOBODY, "extra_groups": []}
        return {}

    def unavailable(self) -> str | None:
        """Why this backend cannot run here (None: it can)."""
        return None


def readable_by_all(path: str) -> bool:
    """Whether a user with no rights of its own can read ``path`` (every directory on the way
    searchable, the file readable, for 'other')."""
    p = Path(path).resolve()
    try:
        if not p.stat().st_mode & stat.S_IROTH:
            return False
        return all(d.stat().st_mode & stat.S_IXOTH for d in p.parents)
    except OSError:
        return False


def sandbox_python(configured: str = "") -> str:
    """An interpreter the sandbox user can run: the configured one, else this service's own base
    interpreter when it lives under /usr (images: /usr/local/bin/python3.11), else the system's.
    A Python under /root (a developer's pyenv) is unreadable after the privilege drop, and a
    program that imports ``hashlib`` would fail there for no fault of its own."""
    import sys

    candidates = [configured] if configured else [
        os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
        "/usr/bin/python3", "/usr/local/bin/python3"]
    for c in candidates:
        real = os.path.realpath(c)
        if real.startswith("/usr/") and os.access(real, os.X_OK) and readable_by_all(real):
            return real
    raise RuntimeError(f"no Python interpreter under /usr readable by an unprivileged user "
                       f"(tried {', '.join(candidates)}); set verifier.code_python")
