"""What a service process does at start: core pinning, the Redis connection."""

import os
import subprocess
import sys

import pytest

from services.common.runtime import cpu_list


def test_cpu_lists():
    assert cpu_list("", [0, 1]) is None
    assert cpu_list("first-half", [0, 1, 2, 3]) == [0, 1]
    assert cpu_list("second-half", [0, 1, 2]) == [1, 2]
    assert cpu_list("second-half", [3]) is None  # one core: nothing to split
    assert cpu_list("0,2-3", [0, 1, 2, 3]) == [0, 2, 3]


@pytest.mark.parametrize("spec", ["zero", "1-x", "0,,1"])
def test_bad_cpu_settings_are_refused_clearly(spec):
    with pytest.raises(SystemExit, match="bad cpus setting"):
        cpu_list(spec, [0, 1])


def test_cores_the_process_may_not_use_are_refused():
    with pytest.raises(SystemExit, match=r"cannot use: \[5\]"):
        cpu_list("1,5", [0, 1])


def test_pinning_applies_to_the_process_and_its_children():
    first = min(os.sched_getaffinity(0))
    code = ("import os, subprocess, sys\n"
            "from services.common.runtime import pin_cpus\n"
            f"pin_cpus('{first}')\n"
            "child = subprocess.run([sys.executable, '-c', 'import os; print(sorted(os.sched_getaffinity(0)))'],"
            " capture_output=True, text=True).stdout.strip()\n"
            "print(sorted(os.sched_getaffinity(0)), child, os.environ['VLLM_CPU_OMP_THREADS_BIND'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == [f"[{first}]", f"[{first}]", str(first)]


def test_require_redis_ends_in_one_line_for_a_bad_or_silent_url(redis_server):
    from services.common.config import load_config
    from services.common.net import free_port
    from services.common.runtime import require_redis

    def cfg(url, wait=0.5):
        return load_config(None, [f"redis.url={url}", f"redis.connect_wait_s={wait}"], environ={})

    with pytest.raises(SystemExit, match=r"t1 trainer: redis.url 'localhost:6379': .*scheme"):
        require_redis(cfg("localhost:6379"), "trainer")
    silent = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(SystemExit, match=r"Redis at redis://:\*\*\*@127.0.0.1:\d+/0 did not answer within 0.5 s") as e:
        require_redis(cfg(silent), "verifier")
    assert "hunter2" not in str(e.value)
    assert require_redis(cfg(redis_server.url), "generator").r.ping()


def test_a_taken_port_is_one_line_naming_it():
    import socket

    from services.common.http import ServerThread, service_app

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=f"could not listen on 127.0.0.1:{port} \\(port in use"):
            ServerThread(service_app("test", dict), "127.0.0.1", port).start()


def test_metrics_answer_at_their_own_path_without_a_redirect():
    from fastapi.testclient import TestClient
    from prometheus_client import Counter

    from services.common.http import service_app

    Counter("t1_test_scrapes_total", "a counter this test reads back").inc(3)
    client = TestClient(service_app("test", dict))
    res = client.get("/metrics", follow_redirects=False)
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    assert "t1_test_scrapes_total 3.0" in res.text
    gz = client.get("/metrics", headers={"Accept-Encoding": "gzip"}, follow_redirects=False)
    assert gz.headers.get("content-encoding") == "gzip"  # prometheus_client's own negotiation
