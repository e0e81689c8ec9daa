"""The python task's sandbox under attack (bubblewrap, the real tool), as root and as an
unprivileged user, plus the isolation levels.

Every attack in ``sandbox_attacks.ATTACKS`` is a program whose tests would pass if the attack
worked (a forged report, a rewritten harness, a read of a host file, a connection to a host
socket that is really listening, ...); each must get its honest verdict, and a correct program
must still pass afterwards.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import sandbox_attacks
from sandbox_attacks import ATTACKS, CORRECT

from services.verifier.code_sandbox import CodeSandbox, extract_code
from services.verifier.isolation.bubblewrap import BubblewrapIsolation

HERE = Path(__file__).resolve()


@pytest.fixture(scope="module")
def host():
    """Things on the host an escaped program could reach: listening sockets and files, in a
    directory everyone may enter (pytest's own tmp is root-only, which would stop a program
    running as nobody for the wrong reason)."""
    d = Path(tempfile.mkdtemp(prefix="t1-host-", dir="/tmp"))
    tcp = socket.create_server(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix_path = str(d / "t1.sock")
    unix.bind(unix_path)
    os.chmod(unix_path, 0o777)
    abstract = f"t1-attack-{uuid.uuid4().hex[:8]}"
    abstract_sock = socket.socket(socket.AF_UNIX)
    abstract_sock.bind("\0" + abstract)
    for s in (tcp, unix, abstract_sock):
        s.listen(16)
    accepted = []

    def accept(s):
        while True:
            try:
                accepted.append(s.accept())
            except OSError:
                return

    for s in (tcp, unix, abstract_sock):
        threading.Thread(target=accept, args=(s,), daemon=True).start()
    secret = d / "secret.txt"
    secret.write_text("the secret")
    os.chmod(secret, 0o644)
    marker = d / "written-by-the-program"
    os.chmod(d, 0o777)  # so that a program running as nobody without isolation could write here
    params = {"port": tcp.getsockname()[1], "unix": unix_path, "abstract": abstract,
              "marker": str(marker), "secret": str(secret), "project": str(HERE)}
    # the sockets really accept: from the host, the attacks' connections would succeed
    socket.create_connection(("127.0.0.1", params["port"]), 1).close()
    deadline = time.monotonic() + 5
    while not accepted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(accepted) == 1
    yield params, marker, accepted
    for s in (tcp, unix, abstract_sock):
        s.close()
    shutil.rmtree(d)


def check_results(results: dict, marker: Path) -> None:
    for name, _code, _tests, (status, passed) in ATTACKS:
        r = results[name]
        assert (r["status"], r["passed"]) == (status, passed), (name, r)
        assert r["isolation"] == "bubblewrap", (name, r)
    for name, _code, tests in CORRECT:
        assert results[name]["status"] == "ok" and results[name]["passed"] == len(tests), (name, results[name])
    assert results["siblings"] == {"victim_passed": 1, "victim_status": "ok", "killer_status": "ok"}
    assert not marker.exists()


def test_attacks_get_honest_verdicts_as_root(host):
    params, marker, accepted = host
    n_before = len(accepted)
    results = sandbox_attacks.run_all(params)
    check_results(results, marker)
    assert len(accepted) == n_before  # no connection reached the host's sockets


def test_attacks_get_honest_verdicts_as_an_unprivileged_verifier(host):
    """The verifier itself as ``nobody`` (as in its image, uid 10001): the same suite."""
    params, marker, accepted = host
    n_before = len(accepted)
    root = HERE.parents[2]
    proc = subprocess.run(["/usr/bin/python3", str(HERE.parent / "sandbox_attacks.py"), json.dumps(params)],
                          capture_output=True, text=True, timeout=300, user=65534, group=65534,
                          extra_groups=[], cwd="/", env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_results(json.loads(proc.stdout), marker)
    assert len(accepted) == n_before


def test_the_process_backend_is_weaker_and_says_so(host):
    """best_effort without bubblewrap: a plain limited process, named in every verdict; the
    attacks the namespaces stop (a host file, a host socket) are not stopped here."""
    params, _, _ = host
    box = CodeSandbox(timeout_s=2.0, memory_mb=256, isolation="best_effort")
    box.bubblewrap = BubblewrapIsolation("/nonexistent/bwrap")
    r = box.run("def f(): return open(%r).read()" % params["secret"], ["assert f() == 'the secret'"])
    assert r.isolation == "process" and r.passed == 1
    assert "isolation=process" in r.detail and "not installed" in r.detail
    forged = box.run(ATTACKS[0][1], ATTACKS[0][2])  # the verdict stays honest all the same
    assert (forged.status, forged.passed) == ("ok", 0)


def test_required_isolation_refuses_where_it_cannot_start():
    box = CodeSandbox(timeout_s=2.0, memory_mb=256, isolation="required")
    box.bubblewrap = BubblewrapIsolation("/nonexistent/bwrap")
    r = box.run("def f(): return 1", ["assert f() == 1"])
    assert r.status == "error" and r.passed == 0 and r.isolation is None
    assert "isolation required but unavailable" in r.detail


def test_bubblewrap_is_what_runs_here():
    """This machine kind must run the real tool: no silent fallback in the suite."""
    assert BubblewrapIsolation().unavailable() is None
    r = CodeSandbox(timeout_s=5.0).run("import sys\ndef v(): return sys.version_info[0]", ["assert v() == 3"])
    assert (r.status, r.passed, r.isolation) == ("ok", 1, "bubblewrap")


def test_reward_is_bounded_and_counts_requested_tests():
    box = CodeSandbox(timeout_s=5.0)
    r = box.run("def add(a, b): return a + b", ["assert add(2, 3) == 5", "assert add(2, 2) == 5"])
    assert (r.status, r.passed, r.total, r.fraction) == ("ok", 1, 2, 0.5)
    assert r.per_test == [True, False]


def test_extracts_the_last_fenced_block():
    assert extract_code("a\n```python\nx=1\n```\nb\n```py\nx=2\n```") == "x=2\n"
    assert extract_code("x = 3") == "x = 3"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
