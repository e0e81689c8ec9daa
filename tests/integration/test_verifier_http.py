"""The verifier REST API over a real socket: `t1 verifier` started as its own process,
called through the project's own typed client."""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from services.common.verifier_client import AsyncVerifierClient, VerifierClient, VerifierError

TOKEN = "s3cret"
TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def verifier_url(start_verifier):
    proc, url = start_verifier(f"verifier.timeout_s={TIMEOUT_S}", "verifier.max_batch=8",
                               "verifier.max_body_bytes=300000", env={"T1__VERIFIER__AUTH_TOKEN": TOKEN})
    yield url
    proc.terminate()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status reports it
    assert proc.wait(15) in (0, -15)


@pytest.fixture
def client(verifier_url):
    with VerifierClient(verifier_url, token=TOKEN, max_batch=8) as c:
        yield c


def post(url, body, token=TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{url}/v1/verify", json=body, headers=headers, timeout=30)


def test_batch_verdicts_in_input_order_across_batches(client):
    items = [{"response": f"so \\boxed{{{n}}}", "gold": str(n if n % 3 else n + 1)} for n in range(20)]
    results = client.verify(items)  # 20 items -> 3 requests of at most 8
    assert [r.correct for r in results] == [bool(n % 3) for n in range(20)]
    assert [r.extracted for r in results] == [str(n) for n in range(20)]


def test_async_client_keeps_order(verifier_url):
    async def go():
        async with AsyncVerifierClient(verifier_url, token=TOKEN, max_batch=4, concurrency=3) as c:
            return await c.verify([{"response": f"\\boxed{{{n}}}", "gold": "5"} for n in range(10)])
    results = asyncio.run(go())
    assert [r.correct for r in results] == [n == 5 for n in range(10)]


def test_result_fields(client):
    r = client.verify([{"response": "\\boxed{82}", "gold": "82", "options": {"finish_reason": "length"}},
                       {"response": "x \\boxed{\\frac{1}{2}}", "gold": "0.5"}])
    assert r[0].reward == -1.0 and r[0].components["truncated"] == 1.0 and r[0].correct is False
    assert r[1].correct and r[1].reward == 1.0 and r[1].status == "ok" and r[1].latency_ms >= 0


ADVERSARIAL = {
    "code injection": "\\boxed{__import__('os').system('touch /tmp/t1-pwned')}",
    "eval string": "\\boxed{eval(\"1+1\")}",
    "power tower": "\\boxed{9^{9^{9^{9}}}}",
    "tower under the screen": "\\boxed{9^{9^{9}}}",
    "huge factorial": "\\boxed{100000!}",
    "huge binomial": "\\boxed{\\binom{10000000}{5000000}}",
    "100k characters": "\\boxed{" + "1+" * 50_000 + "1}",
    "20 nested braces": "\\boxed{" + "{" * 20 + "1" + "}" * 20 + "}",
    "20 nested parens": "\\boxed{" + "(" * 20 + "1" + ")" * 20 + "}",
    "huge literal": "\\boxed{" + "9" * 5000 + "}",
    "unbalanced": "\\boxed{\\frac{1}{",
    "latex commands": "\\boxed{\\input{/etc/passwd}\\def\\x{\\x}\\x}",
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_hostile_answers_get_a_verdict_in_time_and_the_service_stays_healthy(verifier_url, name):
    t0 = time.monotonic()
    r = post(verifier_url, {"items": [{"response": ADVERSARIAL[name], "gold": "2"}]})
    elapsed = time.monotonic() - t0
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert res["correct"] is False
    assert res["status"] in ("ok", "timeout", "error")
    assert elapsed < TIMEOUT_S + 0.5, f"{name}: {elapsed:.2f}s"
    assert httpx.get(f"{verifier_url}/health", timeout=2).json()["ready"] is True
    ok = post(verifier_url, {"items": [{"response": "\\boxed{2}", "gold": "2"}]})
    assert ok.json()["results"][0]["correct"] is True
    import os
    assert not os.path.exists("/tmp/t1-pwned")


def test_python_attacks_over_http_earn_nothing_and_the_service_stays_healthy(verifier_url):
    from sandbox_attacks import ATTACKS

    chosen = {"forged_report_and_exit", "forged_extra_results", "rewritten_builtins", "report_flood",
              "fork_bomb", "memory_bomb", "equal_to_everything", "deep_forged_record"}
    items = [{"response": f"```python\n{code}\n```", "task": "python", "options": {"tests": tests}}
             for name, code, tests, _ in ATTACKS if name in chosen]
    r = post(verifier_url, {"items": items[:8]})
    assert r.status_code == 200, r.text
    for res in r.json()["results"]:
        assert res["reward"] == 0.0 and res["correct"] is False and res["status"] in ("ok", "error")
        assert res["detail"].startswith("isolation=bubblewrap")
    assert httpx.get(f"{verifier_url}/health", timeout=2).json()["ready"] is True
    good = post(verifier_url, {"items": [{"response": "def add(a, b):\n    return a + b", "task": "python",
                                          "options": {"tests": ["assert add(2, 3) == 5"]}}]})
    assert good.json()["results"][0]["reward"] == 1.0


@pytest.mark.parametrize("body,code", [
    ({"items": []}, 422),
    ({"items": [{"response": "x"}]}, 422),  # math needs a gold answer
    ({"items": [{"response": "x", "gold": "1", "task": "chess"}]}, 422),
    ({"items": [{"response": "x", "task": "python"}]}, 422),  # python needs tests
    # a test the verifier could not judge outside the program (no literal side)
    ({"items": [{"response": "x", "task": "python", "options": {"tests": ["assert f(1) == g(1)"]}}]}, 422),
    ({"items": [{"response": "x", "task": "python", "options": {"tests": ["print(1)"]}}]}, 422),
    ({"items": [{"response": "x", "gold": "1", "options": {"finish_reason": "maybe"}}]}, 422),
    ({"wrong": 1}, 422),
    ({"items": [{"response": "x", "gold": "1"}] * 9}, 413),
])
def test_malformed_requests_get_a_clear_4xx(verifier_url, body, code):
    r = post(verifier_url, body)
    assert r.status_code == code
    assert r.json()["detail"]


def test_a_chunked_body_is_held_to_the_same_limit(verifier_url):
    """No Content-Length (chunked transfer): the server reads up to the limit, then says 413."""
    def chunks(total):
        piece = b" " * 65536
        yield b'{"items": [{"response": "so \\\\boxed{2}", "gold": "2"}]'
        for _ in range(total // len(piece)):
            yield piece
        yield b"}"

    headers = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    big = httpx.post(f"{verifier_url}/v1/verify", content=chunks(400_000), headers=headers, timeout=30)
    assert big.status_code == 413 and "request body over 300000 bytes" in big.json()["detail"]
    small = httpx.post(f"{verifier_url}/v1/verify", content=chunks(100_000), headers=headers, timeout=30)
    assert small.status_code == 200 and small.json()["results"][0]["correct"] is True
    assert "content-length" not in {k.lower() for k in small.request.headers}


def test_client_raises_the_servers_message_for_4xx(verifier_url):
    with VerifierClient(verifier_url, token="wrong") as c, pytest.raises(VerifierError) as err:
        c.verify([{"response": "\\boxed{1}", "gold": "1"}])
    assert err.value.status_code == 401 and "bearer" in str(err.value.detail)


def test_oversized_body_and_bad_json(verifier_url):
    assert post(verifier_url, {"items": [{"response": "x" * 150_000, "gold": "1"}] * 2}).status_code == 413
    r = httpx.post(f"{verifier_url}/v1/verify", content=b"{not json",
                   headers={"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"})
    assert r.status_code == 422


def test_bearer_token_is_required_when_configured(verifier_url):
    body = {"items": [{"response": "\\boxed{1}", "gold": "1"}]}
    assert post(verifier_url, body, token=None).status_code == 401
    assert post(verifier_url, body, token="bad").status_code == 401


def test_health_metrics_and_openapi(verifier_url):
    health = httpx.get(f"{verifier_url}/health").json()
    assert health["service"] == "verifier" and health["ready"] is True
    res = httpx.get(f"{verifier_url}/metrics")
    assert res.status_code == 200  # no redirect to /metrics/
    metrics = res.text
    assert "t1_verifier_items_total" in metrics
    spec = httpx.get(f"{verifier_url}/openapi.json").json()
    assert "/v1/verify" in spec["paths"]


def test_overload_sheds_with_503_and_the_client_retries(start_verifier):
    proc, url = start_verifier("verifier.max_inflight_requests=1",
                               "verifier.timeout_s=1.5", "verifier.workers=1")
    try:
        slow = {"items": [{"response": "\\boxed{9^{9^{9}}}", "gold": "1"}]}  # holds the worker 1.5 s
        with ThreadPoolExecutor(2) as ex:
            first = ex.submit(httpx.post, f"{url}/v1/verify", json=slow, timeout=30)
            time.sleep(0.3)
            second = httpx.post(f"{url}/v1/verify", json=slow, timeout=30)
            assert second.status_code == 503 and second.headers["retry-after"] == "1"
            assert first.result().status_code == 200
        with ThreadPoolExecutor(2) as ex:  # the client rides out the 503s
            futures = [ex.submit(VerifierClient(url, backoff_s=0.1).verify,
                                 [{"response": "\\boxed{9^{9^{9}}}", "gold": "1"}]) for _ in range(2)]
            assert all(f.result()[0].status == "timeout" for f in futures)
    finally:
        proc.terminate()
        proc.wait(15)


def test_client_gives_up_on_an_unreachable_server_after_its_retries():
    from services.common.net import free_port

    t0 = time.monotonic()
    with VerifierClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff_s=0.05) as c:
        with pytest.raises(httpx.TransportError):
            c.verify([{"response": "\\boxed{1}", "gold": "1"}])
    assert time.monotonic() - t0 < 5


def run_cli(*args, env=None, timeout=60):
    import os
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_a_token_on_the_command_line_is_refused():
    r = run_cli("verifier", "--config", "quick", "--set", "verifier.auth_token=hunter2")
    assert r.returncode == 2 and "on the command line" in r.stdout + r.stderr
    assert "T1__VERIFIER__AUTH_TOKEN" in r.stdout + r.stderr


def test_listening_beyond_loopback_needs_a_token():
    from services.common.net import free_port

    r = run_cli("verifier", "--config", "quick", "--host", "0.0.0.0", "--port", str(free_port()))
    assert r.returncode != 0 and "without a token" in r.stdout + r.stderr
    missing = run_cli("verifier", "--config", "quick", "--host", "0.0.0.0", "--port", str(free_port()),
                      "--set", "verifier.auth_token_file=/nonexistent/token")
    assert missing.returncode != 0 and "cannot read verifier.auth_token_file" in missing.stdout + missing.stderr


def test_the_token_can_come_from_a_file(start_verifier, tmp_path):
    path = tmp_path / "token"
    path.write_text("from-a-file\n")
    proc, url = start_verifier(f"verifier.auth_token_file={path}")
    body = {"items": [{"response": "\\boxed{2}", "gold": "2"}]}
    assert post(url, body, token="from-a-file").status_code == 200
    assert post(url, body, token=TOKEN).status_code == 401
    assert post(url, body, token=None).status_code == 401
