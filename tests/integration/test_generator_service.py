"""The generator as a service on the real async vLLM engine: continuous batching, the weight
update protocol (finish / abort), backpressure, the OpenAI-compatible API, weight transports."""

import httpx
import msgspec
import pytest

from services.common import streams, weights
from services.common.config import GeneratorConfig
from services.common.http import service_app
from services.common.net import free_port
from services.common.schemas import Prompt, RolloutGroup
from services.generator.engine import RolloutEngine
from services.generator.http import LoopServer, add_openai_error_handlers, mount_openai
from services.generator.worker import GeneratorWorker, unconsumed
from tests.integration.test_generator import perturbed_version

pytestmark = pytest.mark.slow

# long responses keep groups in flight while the test acts on the worker
CFG = GeneratorConfig(samples_per_prompt=4, temperature=1.0, top_p=1.0, max_tokens=160,
                      gpu_memory_utilization=0.1, max_inflight_groups=8,
                      max_model_len=224, enable_prefix_caching=True)  # the model's own: 256


@pytest.fixture(scope="module")
def engine(chat_model_dir):
    """The tiny model, its tokenizer given a chat template (for /v1/chat/completions)."""
    eng = RolloutEngine(str(chat_model_dir), CFG)
    yield eng
    eng.shutdown()


def test_the_engine_takes_the_context_length_and_prefix_caching_it_is_given(engine):
    assert engine.max_model_len == 224
    assert engine.llm.vllm_config.cache_config.enable_prefix_caching is True
    assert engine.prompt_error("Q:1+1\nA:") is None
    assert "in the 224-token context" in engine.prompt_error("Q:" + "1+" * 40 + "1\nA:")  # 85 > 224 - 160


def publish_prompts(s, n, prefix="p"):
    for i in range(n):
        s.publish(streams.PROMPTS, Prompt(prompt_id=f"{prefix}{i}", index=i, text=f"Q:{i}+2\nA:",
                                          gold=str(i + 2)))


def rollouts(s) -> list[RolloutGroup]:
    """What the verifier would take now (read and acknowledged)."""
    c = streams.Consumer(s, streams.ROLLOUTS, "verifier", "v", RolloutGroup)
    entries = c.read(100, block_ms=100)
    pipe = s.transaction()
    c.ack([e.id for e in entries], pipe)
    pipe.execute()
    return [e.msg for e in entries]


@pytest.mark.parametrize("mode", ["finish", "abort"])
def test_weight_update_finishes_or_aborts_the_groups_in_flight_and_loses_none(engine, s, tmp_path,
                                                                             tiny_model_dir, mode):
    cfg = CFG.model_copy(update={"sync_mode": mode})
    worker = GeneratorWorker(s, engine, f"gen-{mode}", cfg, visibility_timeout_s=30)
    run = engine.loop.run
    ann = perturbed_version(tiny_model_dir, tmp_path / "w", 1, seed=1)  # ready before admission
    publish_prompts(s, 4)
    assert run(worker.step()) == 4
    assert len(worker.inflight) == 4  # continuous batching: all four groups in the engine at once
    weights.announce(s, ann)
    assert run(worker.maybe_update_weights())
    assert worker.version == 1 and not worker.inflight
    assert s.r.hget(s.key("generators"), f"gen-{mode}") == b"1"
    assert worker.last_sync["version"] == 1 and worker.last_sync["bytes"] > 0
    first = rollouts(s)
    assert {g.policy_version for g in first} <= {0}
    ids = [g.prompt.prompt_id for g in first]
    if mode == "abort":  # aborted groups published nothing; their prompts are back on the queue
        requeued = s.length(streams.PROMPTS)
        assert requeued >= 1 and len(first) + requeued == 4
        assert s.pending_count(streams.PROMPTS, "generator") == 0
        assert run(worker.step()) == requeued
        run(worker.drain())
        again = rollouts(s)
        assert {g.policy_version for g in again} == {1}  # never a mix of versions
        assert all(len(x.logprobs) == len(x.token_ids) for g in again for x in g.samples)
        ids += [g.prompt.prompt_id for g in again]
    assert sorted(ids) == ["p0", "p1", "p2", "p3"]  # each prompt exactly once
    assert s.pending_count(streams.PROMPTS, "generator") == 0


def test_an_abort_update_right_after_admission_does_not_hang(engine, s, tmp_path, tiny_model_dir):
    # The groups were admitted in the same loop turn as the update: their tasks have not added
    # their requests to the engine yet. Pausing the engine first would leave them waiting in a
    # paused engine forever; they must finish (or be requeued) and the new version load.
    cfg = CFG.model_copy(update={"sync_mode": "abort", "max_tokens": 16})
    worker = GeneratorWorker(s, engine, "gen-race", cfg, visibility_timeout_s=30)
    ann = perturbed_version(tiny_model_dir, tmp_path / "w", 1, seed=2)
    publish_prompts(s, 3, prefix="r")

    async def admit_then_update():
        admitted = await worker.step()
        weights.announce(s, ann)
        return admitted, await worker.maybe_update_weights()

    assert engine.loop.run(admit_then_update(), timeout=120) == (3, True)
    assert worker.version == 1 and not worker.inflight
    done = rollouts(s)
    assert {g.policy_version for g in done} <= {0}
    assert len(done) + s.length(streams.PROMPTS) == 3  # each prompt published or back on the queue
    engine.loop.run(worker.step())
    engine.loop.run(worker.drain())
    assert sorted(g.prompt.prompt_id for g in done + rollouts(s)) == ["r0", "r1", "r2"]


def test_backpressure_stops_admission_while_the_verifier_lags(engine, s):
    cfg = CFG.model_copy(update={"max_pending_rollouts": 2, "max_tokens": 8,
                                 "max_prompts_per_batch": 3})
    worker = GeneratorWorker(s, engine, "gen-bp", cfg, visibility_timeout_s=30, block_ms=100)
    run = engine.loop.run
    publish_prompts(s, 5)
    assert run(worker.step()) == 3  # nothing pending downstream: one read's worth admitted
    run(worker.drain())
    assert unconsumed(s, streams.ROLLOUTS, 2) == 3
    assert run(worker.step()) == 0 and worker.pending_rollouts == 3  # nothing read meanwhile
    c = streams.Consumer(s, streams.ROLLOUTS, "verifier", "v", RolloutGroup)
    entries = c.read(2, block_ms=100)
    assert unconsumed(s, streams.ROLLOUTS, 2) == 3  # read but not acknowledged still counts
    pipe = s.transaction()
    c.ack([e.id for e in entries], pipe)
    pipe.execute()
    assert unconsumed(s, streams.ROLLOUTS, 2) == 1
    assert run(worker.step()) == 2
    run(worker.drain())


def test_openai_completions_are_served_by_the_same_engine(engine, tiny_model_dir):
    ready = {"ready": False}
    app = service_app("generator", lambda: dict(ready))
    add_openai_error_handlers(app)
    port = free_port()
    server = LoopServer(app, "127.0.0.1", port, engine.loop).start()
    url = f"http://127.0.0.1:{port}"
    try:
        assert httpx.get(f"{url}/health").status_code == 503  # engine not mounted yet
        engine.loop.run(mount_openai(app, engine, "t1-tiny"))
        ready["ready"] = True
        assert httpx.get(f"{url}/health").status_code == 200
        models = httpx.get(f"{url}/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["t1-tiny"]
        prompt = "Q:12+34\nA:"
        resp = httpx.post(f"{url}/v1/completions", timeout=60, json={
            "model": "t1-tiny", "prompt": prompt, "max_tokens": 12, "temperature": 0.0,
            "echo": True})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["object"] == "text_completion" and body["model"] == "t1-tiny"
        choice = body["choices"][0]
        assert choice["text"].startswith(prompt)  # echo: the text continues the prompt ...
        greedy = engine.generate([prompt], engine.sampling_params(n=1, temperature=0.0,
                                                                   max_tokens=12, top_p=1.0))
        assert choice["text"] == prompt + greedy[0].samples[0].text  # ... as the engine would
        assert choice["finish_reason"] in ("stop", "length")
        assert body["usage"]["completion_tokens"] == len(greedy[0].samples[0].token_ids)
        bad = httpx.post(f"{url}/v1/completions", json={"model": "t1-tiny", "prompt": prompt,
                                                         "max_tokens": -1})
        assert bad.status_code == 400
        # chat completions: vLLM's own route, the model's chat template, the same engine
        messages = [{"role": "system", "content": "Add."}, {"role": "user", "content": "12+34"}]
        chat = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "t1-tiny", "messages": messages, "max_tokens": 12, "temperature": 0.0})
        assert chat.status_code == 200, chat.text
        reply = chat.json()["choices"][0]
        templated = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert templated.startswith("<|im_start|>system\nAdd.<|im_end|>")
        greedy = engine.generate([templated], engine.sampling_params(n=1, temperature=0.0,
                                                                      max_tokens=12, top_p=1.0))
        assert reply["message"]["role"] == "assistant"
        assert reply["message"]["content"] == greedy[0].samples[0].text
        metrics = httpx.get(f"{url}/metrics").text
        for name in ("t1_generator_inflight_groups", "t1_generator_tokens_per_second",
                     "t1_generator_policy_version", "t1_generator_weight_sync_last_seconds"):
            assert name in metrics
    finally:
        server.stop()


def test_an_announcement_is_its_version_and_digest(engine, s, tmp_path, tiny_model_dir):
    """A trainer that lost its last commit re-trains and re-publishes v1 with other bytes, or
    falls back below the version served: the generator serves what is announced. The same
    announcement twice is one load; one that failed to load is not retried, but the same
    version with other (good) bytes is."""
    worker = GeneratorWorker(s, engine, "gen-identity", CFG, visibility_timeout_s=30)
    run = engine.loop.run
    first = perturbed_version(tiny_model_dir, tmp_path / "a", 1, seed=5)
    weights.announce(s, first)
    assert run(worker.maybe_update_weights()) and (worker.version, worker.digest) == (1, first.sha256)
    loads = engine.weight_updates
    assert not run(worker.maybe_update_weights())  # nothing new: no reload
    again = perturbed_version(tiny_model_dir, tmp_path / "b", 1, seed=6)
    assert again.sha256 != first.sha256
    weights.announce(s, again)
    assert run(worker.maybe_update_weights()) and (worker.version, worker.digest) == (1, again.sha256)
    assert engine.weight_updates == loads + 1

    second = perturbed_version(tiny_model_dir, tmp_path / "c", 2, seed=7)
    weights.announce(s, msgspec.structs.replace(second, sha256="0" * 64))
    assert not run(worker.maybe_update_weights()) and worker.version == 1  # bad digest: refused
    assert not run(worker.maybe_update_weights())  # and not retried
    weights.announce(s, second)
    assert run(worker.maybe_update_weights()) and (worker.version, worker.digest) == (2, second.sha256)

    weights.announce(s, first)  # the trainer fell back to an older commit
    assert run(worker.maybe_update_weights()) and (worker.version, worker.digest) == (1, first.sha256)
    assert s.r.hget(s.key("generators"), "gen-identity") == b"1"
