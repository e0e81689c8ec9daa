"""Attacks on the python task's sandbox, each with the honest verdict it must get.

Used by test_code_sandbox.py twice: in the test process (root here) and, as a script, by an
unprivileged user (``python sandbox_attacks.py PARAMS_JSON`` prints the results as JSON), the
way the verifier runs in its image. Standard library and the project only.

Placeholders, replaced per run by Python literals: {port} a TCP port listening on the host's
loopback, {unix} a unix socket path and {abstract} an abstract unix socket name listening on the
host, {marker} a host path that must not come to exist, {secret} a host file readable by
everyone, {project} a file of this repository.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# name, code, tests, (status, passed): every test below would pass if the attack worked
ATTACKS = [
    ("forged_report_and_exit",
     "import os\nfor fd in range(3, 64):\n    try: os.write(fd, b'{\"i\": 0, \"v\": [\"bool\", true]}\\n')\n"
     "    except OSError: pass\nos._exit(0)",
     ["assert add(2, 3) == 5"], ("ok", 0)),
    ("forged_extra_results",
     "import os\nfor fd in range(3, 64):\n    try: os.write(fd, b'{\"i\": 0, \"v\": [\"int\", \"5\"]}\\n' * 3)\n"
     "    except OSError: pass\ndef add(a, b): return 0",
     ["assert add(2, 3) == 5"], ("error", 0)),
    ("exit_zero_before_tests", "import os\nos._exit(0)", ["assert add(2, 3) == 5"], ("ok", 0)),
    ("sys_exit", "raise SystemExit(0)", ["assert add(2, 3) == 5"], ("ok", 0)),
    ("equal_to_everything",
     "class Any:\n    def __eq__(self, other): return True\n    __hash__ = object.__hash__\n"
     "def add(a, b): return Any()",
     ["assert add(2, 3) == 5"], ("ok", 0)),
    ("int_subclass", "class I(int):\n    def __eq__(self, o): return True\ndef add(a, b): return I(0)",
     ["assert add(2, 3) == 5"], ("ok", 0)),
    ("rewritten_builtins",
     "import builtins, json\nbuiltins.eval = lambda *a, **k: 5\njson.dumps = lambda *a, **k: "
     "'{\"i\": 0, \"v\": [\"bool\", true]}'\nbuiltins.AssertionError = Exception\ndef add(a, b): return 0",
     ["assert add(2, 3) == 5", "assert add(1, 1) == 2"], ("error", 0)),  # both lines say test 0
    ("report_flood",
     "import os\nfor fd in range(3, 64):\n    try:\n        while True: os.write(fd, b'x' * 65536)\n"
     "    except OSError: pass",
     ["assert f() == 1"], ("error", 0)),
    ("stdout_flood", "import sys\nwhile True: sys.stdout.write('x' * 65536)", ["assert f() == 1"], ("timeout", 0)),
    ("fork_bomb", "import os\nwhile True: os.fork()", ["assert f() == 1"], ("ok", 0)),
    ("subprocess", "import subprocess\ndef f(): return subprocess.run(['true']).returncode",
     ["assert f() == 0"], ("ok", 0)),
    ("memory_bomb", "x = bytearray(4 * 1024**3)\ndef f(): return 1", ["assert f() == 1"], ("ok", 0)),
    ("cpu_bomb", "while True: pass", ["assert f() == 1"], ("timeout", 0)),
    ("sleeper", "import time\ntime.sleep(3600)", ["assert f() == 1"], ("timeout", 0)),
    ("tcp_to_host", "import socket\ndef f():\n    s = socket.create_connection(('127.0.0.1', {port}), 1)\n"
     "    return 'connected'", ["assert f() == 'connected'"], ("ok", 0)),
    ("unix_socket_to_host", "import socket\ndef f():\n    s = socket.socket(socket.AF_UNIX)\n"
     "    s.connect({unix})\n    return 'connected'", ["assert f() == 'connected'"], ("ok", 0)),
    ("abstract_socket_to_host", "import socket\ndef f():\n    s = socket.socket(socket.AF_UNIX)\n"
     "    s.connect('\\0' + {abstract})\n    return 'connected'", ["assert f() == 'connected'"], ("ok", 0)),
    ("write_host_file", "def f():\n    open({marker}, 'w').write('x')\n    return 'written'",
     ["assert f() == 'written'"], ("ok", 0)),
    ("read_host_file", "def f(): return open({secret}).read()", ["assert f() == 'the secret'"], ("ok", 0)),
    ("read_project_file", "def f(): return len(open({project}).read()) > 0", ["assert f()"], ("ok", 0)),
    ("list_processes", "import os\ndef f(): return len(os.listdir('/proc')) > 0", ["assert f()"], ("ok", 0)),
    ("etc_passwd", "def f(): return 'root' in open('/etc/passwd').read()", ["assert f()"], ("ok", 0)),
    ("write_usr", "def f():\n    open('/usr/t1-x', 'w')\n    return 'written'", ["assert f() == 'written'"], ("ok", 0)),
    ("nested_user_namespace", "import ctypes\ndef f():\n    libc = ctypes.CDLL(None, use_errno=True)\n"
     "    return 'unshared' if libc.unshare(0x10000000) == 0 else 'denied'",  # CLONE_NEWUSER
     ["assert f() == 'unshared'"], ("ok", 0)),
    ("huge_value", "def f(): return 'x' * (2 * 1024**2)", ["assert f() == 'x'"], ("error", 0)),
    ("deep_forged_record",  # a decoder without limits would recurse until it crashed
     "import os\nline = b'{\"i\": 0, \"v\": ' + b'[' * 100000 + b']' * 100000 + b'}\\n'\n"
     "for fd in range(3, 64):\n    try: os.write(fd, line)\n    except OSError: pass\nos._exit(0)",
     ["assert f() == []"], ("ok", 0)),
]

# correct programs, importing ordinary standard-library modules: every test passes
CORRECT = [
    ("stdlib_imports",
     "import hashlib, json, re, collections, itertools, fractions, decimal, heapq, datetime, math\n"
     "def digest(s): return hashlib.sha256(s.encode()).hexdigest()[:8]\n"
     "def top2(xs): return heapq.nlargest(2, xs)\n"
     "def half(): return fractions.Fraction(1, 2)\n"
     "def counts(s): return dict(collections.Counter(s))",
     ["assert digest('') == 'e3b0c442'", "assert top2([3, 1, 4, 1, 5]) == [5, 4]",
      "assert float(half()) == 0.5", "assert counts('aab') == {'a': 2, 'b': 1}",
      "assert math.isclose(sum([0.1] * 10), 1.0)", "assert abs(math.pi - 3.14159) < 1e-5"]),
    ("tmp_is_writable", "def f():\n    open('/tmp/x', 'w').write('hi')\n    return open('/tmp/x').read()",
     ["assert f() == 'hi'", "assert f() in ('hi', 'ho')", "assert f() is not None"]),
    ("data_types", "def f(): return ((1, 2), {3}, frozenset({4}), b'\\x00', 1 + 2j, None, 2**100)",
     ["assert f() == ((1, 2), {3}, {4}, b'\\x00', 1 + 2j, None, 1267650600228229401496703205376)",
      "assert f()[0] != [1, 2]", "assert not f()[5]", "assert f()[5] is None", "assert len(f()) >= 7"]),
]


def run_all(params: dict) -> dict:
    from services.verifier.code_sandbox import CodeSandbox

    box = CodeSandbox(timeout_s=2.0, memory_mb=256)
    out = {}
    for name, code, tests, _ in ATTACKS:
        for key, value in params.items():
            code = code.replace("{" + key + "}", repr(value))
        r = box.run(code, tests)
        out[name] = {"status": r.status, "passed": r.passed, "isolation": r.isolation, "detail": r.detail}
    for name, code, tests in CORRECT:
        r = box.run(code, tests)
        out[name] = {"status": r.status, "passed": r.passed, "total": r.total, "detail": r.detail}
    out["siblings"] = siblings(box)
    return out


def siblings(box) -> dict:
    """A check that kills every process it can, beside one that is still computing."""
    results = {}

    def victim():
        results["victim"] = box.run("import time\ntime.sleep(1.0)\ndef f(): return 42", ["assert f() == 42"])

    thread = threading.Thread(target=victim)
    thread.start()
    time.sleep(0.3)
    killer = box.run("import os, signal\nfor pid in [-1] + list(range(1, 4096)):\n"
                     "    try: os.kill(pid, signal.SIGKILL)\n    except OSError: pass\ndef f(): return 1",
                     ["assert f() == 1"])
    thread.join()
    return {"victim_passed": results["victim"].passed, "victim_status": results["victim"].status,
            "killer_status": killer.status}


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(run_all(json.loads(sys.argv[1]))))
