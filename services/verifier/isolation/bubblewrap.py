"""``bubblewrap``: each check in its own user, PID, mount, IPC, UTS, cgroup and network
namespaces (``bwrap --unshare-all``, Debian's ``bubblewrap``).

What the program sees: ``/usr`` (the interpreter and its standard library) and the merged-usr
links, read-only; a minimal ``/dev``; a private 16 MiB tmpfs at ``/tmp`` as its only writable
place, gone when it exits. No ``/proc`` (no process of the host or of another check to see, and
a fresh procfs cannot be mounted in unprivileged containers anyway), no ``/etc``, no home, no
project files, no network (a new namespace has only a loopback that is down). A seccomp filter
(``seccomp.py``) refuses further namespaces, mounts, ptrace and other kernel surface. It dies
with the verifier (``--die-with-parent``) and cannot reach the terminal (``--new-session``).

bwrap itself runs unprivileged (as ``nobody`` when the verifier is root), so it needs
unprivileged user namespaces: on hosts ``kernel.unprivileged_userns_clone`` / AppArmor must
allow them; in containers the runtime's seccomp profile must allow ``unshare``/``clone`` with
``CLONE_NEWUSER`` (docs/deploy.md, "Verifier sandbox")."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

from services.verifier.isolation import seccomp
from services.verifier.isolation.base import NOBODY, Isolation

TMPFS_BYTES = 16 * 2**20


class BubblewrapIsolation(Isolation):
    name = "bubblewrap"

    def __init__(self, bwrap: str | None = None) -> None:
        self.bwrap = bwrap or shutil.which("bwrap") or "bwrap"
        self._unavailable: str | None | bool = False  # False: not probed yet

    def command(self, argv: list[str]) -> tuple[list[str], list[int]]:
        # not --hostname (container seccomp profiles refuse sethostname) nor --disable-userns
        # (it writes /proc/sys, read-only in containers): the seccomp filter covers the latter
        filter_fd = seccomp.program_fd()
        args = [self.bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
                "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--uid", str(NOBODY),
                "--gid", str(NOBODY), "--seccomp", str(filter_fd), "--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(top):
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):  # a system without merged /usr
                args += ["--ro-bind", top, top]
        args += ["--dev", "/dev", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp", "--chdir", "/tmp"]
        return args + argv, [filter_fd]

    def unavailable(self) -> str | None:
        if self._unavailable is False:
            self._unavailable = self._probe()
        return self._unavailable

    def _probe(self) -> str | None:
        if shutil.which(self.bwrap) is None:
            return "bubblewrap (bwrap) is not installed"
        if not seccomp.supported():
            return f"no seccomp table for {platform.machine()} (x86_64 and aarch64 have one)"
        argv, fds = self.command(["/bin/sh", "-c", "exit 0"])
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=10, pass_fds=fds,
                                  **self.popen_kwargs())
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bubblewrap cannot start: {exc}"
        finally:
            for fd in fds:
                os.close(fd)
        if proc.returncode != 0:
            why = proc.stderr.decode(errors="replace").strip().splitlines()
            return f"bubblewrap cannot create its namespaces here: {why[-1] if why else proc.returncode}"
        return None
