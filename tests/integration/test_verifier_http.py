"""The verifier REST API over a real socket: `t1 verifier` started as its own process."""

import subprocess
import sys
import time

import httpx
import pytest

from services.common.net import free_port

TOKEN = "s3cret"


@pytest.fixture(scope="module")
def verifier_url(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("verifier") / "verifier.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "verifier", "--port", str(port), "--config", "quick",
         "--set", f"verifier.auth_token={TOKEN}", "--set", "verifier.timeout_s=2",
         "--set", "verifier.max_batch=8", "--set", "verifier.max_body_bytes=20000"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("verifier did not become healthy")
    yield url
    proc.terminate()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status reports it
    assert proc.wait(15) in (0, -15)


def post(url, body, token=TOKEN, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{url}/v1/verify", json=body, headers=headers, timeout=30, **kw)


def test_batch_verdicts_in_input_order(verifier_url):
    items = [
        {"response": "so \\boxed{82}", "gold": "82"},
        {"response": "so \\boxed{81}", "gold": "82"},
        {"response": "no answer", "gold": "82"},
        {"response": "x \\boxed{\\frac{1}{2}}", "gold": "0.5"},
        {"response": "\\boxed{x=3}", "gold": "3"},
        {"response": "\\boxed{82}", "gold": "82", "options": {"finish_reason": "length"}},
    ]
    r = post(verifier_url, {"items": items})
    assert r.status_code == 200
    res = r.json()["results"]
    assert [x["correct"] for x in res] == [True, False, False, True, True, False]
    assert [x["reward"] for x in res] == [1.0, 0.0, 0.0, 1.0, 1.0, -1.0]
    assert res[0]["extracted"] == "82" and res[2]["extracted"] is None
    assert res[5]["components"]["truncated"] == 1.0
    assert all(x["status"] == "ok" and x["latency_ms"] >= 0 for x in res)


def test_hostile_answer_gets_a_verdict_not_a_5xx(verifier_url):
    r = post(verifier_url, {"items": [{"response": "\\boxed{9^{9^{9^{9^{9}}}}}", "gold": "1"},
                                      {"response": "\\boxed{__import__('os')}", "gold": "1"}]})
    assert r.status_code == 200
    res = r.json()["results"]
    assert res[0]["status"] == "timeout" and res[0]["correct"] is False
    assert res[1]["status"] in ("ok", "error") and res[1]["correct"] is False


@pytest.mark.parametrize("body,code", [
    ({"items": []}, 422),
    ({"items": [{"response": "x"}]}, 422),
    ({"items": [{"response": "x", "gold": "1", "task": "chess"}]}, 422),
    ({"wrong": 1}, 422),
    ({"items": [{"response": "x", "gold": "1"}] * 9}, 413),
])
def test_malformed_requests_get_a_clear_4xx(verifier_url, body, code):
    r = post(verifier_url, body)
    assert r.status_code == code
    assert "detail" in r.json()


def test_oversized_body_is_rejected(verifier_url):
    r = post(verifier_url, {"items": [{"response": "x" * 30000, "gold": "1"}]})
    assert r.status_code == 413


def test_not_json_is_a_4xx(verifier_url):
    r = httpx.post(f"{verifier_url}/v1/verify", content=b"{not json",
                   headers={"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"})
    assert r.status_code == 422


def test_bearer_token_is_required_when_configured(verifier_url):
    assert post(verifier_url, {"items": [{"response": "\\boxed{1}", "gold": "1"}]}, token=None).status_code == 401
    assert post(verifier_url, {"items": [{"response": "\\boxed{1}", "gold": "1"}]}, token="bad").status_code == 401


def test_health_metrics_and_openapi(verifier_url):
    health = httpx.get(f"{verifier_url}/health").json()
    assert health["service"] == "verifier" and health["ready"] is True
    metrics = httpx.get(f"{verifier_url}/metrics/").text
    assert "t1_verifier_items_total" in metrics
    spec = httpx.get(f"{verifier_url}/openapi.json").json()
    assert "/v1/verify" in spec["paths"]
