"""``process``: the interpreter as a plain child process (the ``best_effort`` fallback).

Limits only: rlimits (set by the harness), ``nobody`` when the verifier is root, an empty
environment, a fresh temp directory. No namespaces: the program can read world-readable host
files, list processes and reach the network. Verdicts say ``isolation=process``."""

from __future__ import annotations

from services.verifier.isolation.base import Isolation


class ProcessIsolation(Isolation):
    name = "process"

    def command(self, argv: list[str]) -> tuple[list[str], list[int]]:
        return argv, []
