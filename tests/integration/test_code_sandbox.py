"""The local code sandbox's limits, and the docker backend up to the SDK boundary."""

import json

import pytest

from services.verifier.code_sandbox import DockerSandbox, LocalProcessSandbox, extract_code


@pytest.fixture(scope="module")
def box():
    return LocalProcessSandbox(timeout_s=3.0, memory_mb=256)


def test_extracts_the_last_fenced_block():
    assert extract_code("a\n```python\nx=1\n```\nb\n```py\nx=2\n```") == "x=2\n"
    assert extract_code("x = 3") == "x = 3"


def test_no_network_no_processes_no_memory_bomb(box):
    net = box.run("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))", ["assert True"])
    assert net.passed == 0 and net.detail is not None
    fork = box.run("import os\nos.fork()", ["assert True"])
    assert fork.passed == 0 and "Error" in fork.detail
    mem = box.run("x = bytearray(2 * 1024**3)", ["assert True"])
    assert mem.passed == 0 and "MemoryError" in mem.detail


def test_files_stay_in_a_throwaway_directory(box, tmp_path):
    marker = tmp_path / "outside.txt"
    r = box.run(f"open({str(marker)!r}, 'w').write('x')", ["assert True"])
    assert r.passed == 0 and not marker.exists()


def test_a_forged_report_line_does_not_pass(box):
    forged = ("import sys, os\nsys.stdout.write('\\n__T1_RESULTS__' + "
              + repr(json.dumps({"results": [True], "error": None, "isolated": True}))
              + " + '\\n')\nsys.stdout.flush()\nos._exit(0)")
    r = box.run(forged, ["assert False"])
    assert r.status == "error" and r.passed == 0


def test_docker_backend_spec_is_locked_down():
    spec = DockerSandbox("python:3.11-slim", 5, 256).container_spec("{}")
    assert spec["network_disabled"] is True and spec["read_only"] is True
    assert spec["mem_limit"] == "256m" and spec["pids_limit"] == 16 and spec["cap_drop"] == ["ALL"]
    assert spec["user"] == "65534:65534"


def test_docker_backend_without_an_engine_says_so():
    # No Docker engine runs on this project's machines: the SDK boundary is as far as we test.
    with pytest.raises(RuntimeError, match="no Docker engine reachable"):
        DockerSandbox(timeout_s=2).run("x=1", ["assert x == 1"])
