"""A seccomp filter for the sandboxed program (loaded by ``bwrap --seccomp FD``).

bubblewrap's ``--disable-userns`` needs a writable ``/proc/sys``, which containers do not have,
so nested namespaces are refused here instead, with the kernel surface a grader never needs:
new namespaces (``unshare``, ``setns``, ``clone`` with a namespace flag; ``clone3`` answers
ENOSYS so that libc falls back to ``clone``), mounts, ``ptrace`` and cross-process memory
access, keyrings, BPF, perf, userfaultfd, io_uring, modules, kexec, reboot, swap, quotas and
the kernel log. Everything else is allowed: the rlimits, the namespaces and the read-only view
do the rest. A foreign architecture (an x32 or 32-bit call on x86_64) kills the process.

Classic BPF, built here (a dozen lines of ``struct sock_filter``) rather than through
libseccomp, whose Python binding is not on PyPI.
"""

from __future__ import annotations

import os
import platform
import struct

# sock_filter opcodes
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_KILL_PROCESS, _ALLOW = 0x80000000, 0x7FFF0000
_EPERM, _ENOSYS = 0x00050000 | 1, 0x00050000 | 38
_NR, _ARCH, _ARG0 = 0, 4, 16  # offsets in struct seccomp_data (arg0's low 32 bits: little endian)
_NS_FLAGS = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET

# syscalls refused with EPERM: (x86_64 number, aarch64 number)
_DENIED = {
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39),
    "pivot_root": (155, 41), "chroot": (161, 51), "open_tree": (428, 428),
    "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432),
    "fspick": (433, 433), "mount_setattr": (442, 442), "ptrace": (101, 117),
    "process_vm_readv": (310, 270), "process_vm_writev": (311, 271), "keyctl": (250, 219),
    "add_key": (248, 217), "request_key": (249, 218), "bpf": (321, 280),
    "perf_event_open": (298, 241), "userfaultfd": (323, 282), "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426), "io_uring_register": (427, 427), "init_module": (175, 105),
    "finit_module": (313, 273), "delete_module": (176, 106), "kexec_load": (246, 104),
    "kexec_file_load": (320, 294), "reboot": (169, 142), "swapon": (167, 224),
    "swapoff": (168, 225), "acct": (163, 89), "quotactl": (179, 60), "syslog": (103, 116),
    "name_to_handle_at": (303, 264), "open_by_handle_at": (304, 265),
}
# per architecture: audit arch, column in _DENIED, clone, clone3
_ARCHES = {"x86_64": (0xC000003E, 0, 56, 435), "aarch64": (0xC00000B7, 1, 220, 435)}


def supported() -> bool:
    return platform.machine() in _ARCHES


def program(machine: str | None = None) -> bytes:
    """The filter for ``machine`` (default: this one) as bytes of ``struct sock_filter``."""
    arch, column, clone, clone3 = _ARCHES[machine or platform.machine()]
    # (code, jump-if-true label, jump-if-false label, k); labels resolve to the tail's returns
    body: list[tuple[int, str | None, str | None, int]] = [
        (_LD_ABS, None, None, _ARCH), (_JEQ, None, "kill", arch), (_LD_ABS, None, None, _NR)]
    if arch == 0xC000003E:
        body.append((_JGE, "kill", None, 0x40000000))  # the x32 ABI's numbers
    body += [(_JEQ, "eperm", None, nr) for nr in sorted(nrs[column] for nrs in _DENIED.values())]
    body += [(_JEQ, "enosys", None, clone3), (_JEQ, None, "allow", clone),
             (_LD_ABS, None, None, _ARG0), (_JSET, "eperm", "allow", _NS_FLAGS)]
    tail = {"allow": _ALLOW, "eperm": _EPERM, "enosys": _ENOSYS, "kill": _KILL_PROCESS}
    where = {name: len(body) + i for i, name in enumerate(tail)}
    out = bytearray()
    for i, (code, jt, jf, k) in enumerate(body):
        rel = [where[x] - (i + 1) if x else 0 for x in (jt, jf)]
        out += struct.pack("=HBBI", code, rel[0], rel[1], k)
    for k in tail.values():
        out += struct.pack("=HBBI", _RET, 0, 0, k)
    return bytes(out)


def program_fd() -> int:
    """A fresh memfd holding the filter, at offset 0 (bwrap reads it to the end)."""
    fd = os.memfd_create("t1-seccomp", 0)
    os.write(fd, program())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
