"""The trainer on the real DeepSpeed engine and a real Redis, fed scored groups directly.

Responses are written by the test (correct and wrong CoT traces) and their behaviour log-probs
are computed with the starting model, so on the first step behaviour == policy: the trainer's
own log-probs must then agree to float precision, which checks the sequence/logit alignment.
"""

import random
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.common import streams, weights
from services.common.config import VerifierConfig
from services.common.ledger import Ledger
from services.common.schemas import Prompt, RolloutGroup, Sample, ScoredGroup
from services.data.tasks import AdditionTask
from services.trainer.rl import RLTrainer
from services.verifier.scoring import Scorer

K = 4


@pytest.fixture(scope="module")
def scorer():
    sc = Scorer(VerifierConfig(workers=1))
    yield sc
    sc.close()


@pytest.fixture
def trainer_setup(s, make_config, redis_server, tiny_model_dir):
    cfg = make_config("trainer.groups_per_step=2", "trainer.total_steps=3", "trainer.lr=1e-3",
                      "trainer.drop_zero_variance=true",
                      f"redis.prefix={s.prefix}", redis_url=redis_server.url)
    trainer = RLTrainer(cfg, s, "trainer-test")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return cfg, trainer, tok, model


def behaviour_logprobs(model, prompt_ids, resp_ids):
    ids = torch.tensor([prompt_ids + resp_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return [logp[len(prompt_ids) - 1 + t, tok].item() for t, tok in enumerate(resp_ids)]


def scored_group(prompt: Prompt, tok, model, scorer, version=0, n_correct=2):
    task = AdditionTask()
    rng = random.Random(prompt.index)
    p_ids = tok(prompt.text, add_special_tokens=False)["input_ids"]
    samples = []
    for i in range(K):
        answer = int(prompt.gold) + (0 if i < n_correct else 1 + i)
        text = task.cot(task.problem(prompt.index), rng, p_error=0).rsplit("\\boxed", 1)[0] + f"\\boxed{{{answer}}}"
        r_ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        samples.append(Sample(text=text, token_ids=r_ids, logprobs=behaviour_logprobs(model, p_ids, r_ids),
                              finish_reason="stop"))
    group = RolloutGroup(prompt=prompt, prompt_token_ids=p_ids, samples=samples, policy_version=version,
                         generator_id="test", temperature=1.0, top_p=1.0)
    return ScoredGroup(rollout=group, verdicts=[scorer.score(x.text, prompt.gold) for x in samples])


def take_prompts(s, n):
    c = streams.Consumer(s, streams.PROMPTS, "generator", "test-gen", Prompt)
    entries = c.read(n, block_ms=200)
    pipe = s.transaction()
    c.ack([e.id for e in entries], pipe)
    pipe.execute()
    return [e.msg for e in entries]


def test_admission_bound_and_one_step_publishes_a_version(s, trainer_setup, scorer):
    cfg, trainer, tok, model = trainer_setup
    ledger = Ledger(s)
    cap = (cfg.trainer.max_staleness + 1) * cfg.trainer.groups_per_step
    assert trainer.feeder.top_up(0) == cap
    assert trainer.feeder.top_up(0) == 0  # bound reached: nothing more is admitted
    assert ledger.in_flight() == cap

    prompts = take_prompts(s, cap)
    for p in prompts[:2]:
        s.publish(streams.SCORED, scored_group(p, tok, model, scorer))
    record = None
    for _ in range(20):
        record = trainer.run_once()
        if record:
            break
    assert record is not None and record["step"] == 1
    # behaviour == policy on the first step: the trainer's log-probs line up with the samples'
    assert record["ratio_dev"] < 1e-4
    assert record["reward_mean"] == pytest.approx(0.5)

    ann = weights.latest(s)
    assert ann.version == 1 and trainer.version == 1
    weights.verify(ann)  # directory bytes match the announced sha256
    base = load_file(str(cfg.model.path) + "/model.safetensors")
    new = load_file(ann.uri + "/model.safetensors")
    assert any(not torch.equal(base[k], new[k]) for k in base)
    # the version's probe: the published files reproduce the trainer's log-probs of it
    from services.common.weight_probe import max_difference, probe_logprobs

    probe = ann.probe
    assert len(probe.token_ids) == cfg.trainer.weight_probe_sequences
    assert all(len(lp) == cfg.trainer.weight_probe_tokens - 1 for lp in probe.logprobs)
    published = AutoModelForCausalLM.from_pretrained(ann.uri, dtype=torch.float32)
    assert max_difference(probe.logprobs, probe_logprobs(published, probe.token_ids)) < 1e-5
    assert max_difference(probe.logprobs, probe_logprobs(model, probe.token_ids)) > 0  # not the base's
    counts = ledger.counts()
    assert counts["trained"] == 2 and ledger.in_flight() == cap - 2
    assert s.pending_count(streams.SCORED, "trainer") == 0


def test_drops_are_recorded_with_reasons_and_duplicates_skipped(s, trainer_setup, scorer):
    cfg, trainer, tok, model = trainer_setup
    ledger = Ledger(s)
    trainer.feeder.top_up(0)
    p = take_prompts(s, 4)
    trainer.version = 3  # pretend three steps have passed: version-0 groups are now too stale
    s.publish(streams.SCORED, scored_group(p[0], tok, model, scorer, version=0))
    s.publish(streams.SCORED, scored_group(p[1], tok, model, scorer, version=3, n_correct=K))
    good = scored_group(p[2], tok, model, scorer, version=3)
    s.publish(streams.SCORED, good)
    s.publish(streams.SCORED, good)  # a redelivered duplicate
    for _ in range(5):
        trainer.run_once()
    statuses = ledger.statuses()
    assert statuses[p[0].prompt_id] == "dropped:too_stale"
    assert statuses[p[1].prompt_id] == "dropped:zero_variance"
    assert len(trainer.admission.current.groups) == 1  # the duplicate was not admitted twice
    assert ledger.counts()["dropped"] == 2
    trainer.finish()
    audit = ledger.audit()
    assert audit.get("enqueued", 0) == 0
    assert ledger.in_flight() == 0
    assert audit["prompts"] == ledger.counts()["enqueued"]


def test_a_failed_check_leaves_out_its_sample_not_the_group(s, trainer_setup, scorer):
    """One sample's verifier timeout: the group trains on the other three; a group with fewer
    than trainer.min_scored_samples scored samples left is dropped as verifier_error."""
    import msgspec

    cfg, trainer, tok, model = trainer_setup
    ledger = Ledger(s)
    trainer.feeder.top_up(0)
    p = take_prompts(s, 3)

    def with_timeouts(g, n):
        timeout = msgspec.structs.replace(g.verdicts[0], status="timeout", reward=0.0, correct=False)
        return ScoredGroup(rollout=g.rollout, verdicts=[timeout] * n + list(g.verdicts[n:]))

    # K=4: samples 0,1 correct, 2,3 wrong; the timed-out sample 0 leaves 1 right + 2 wrong
    s.publish(streams.SCORED, with_timeouts(scored_group(p[0], tok, model, scorer), 1))
    s.publish(streams.SCORED, with_timeouts(scored_group(p[1], tok, model, scorer), 3))  # 1 left
    s.publish(streams.SCORED, scored_group(p[2], tok, model, scorer))
    record = None
    for _ in range(20):
        record = trainer.run_once()
        if record:
            break
    assert ledger.status(p[1].prompt_id) == "dropped:verifier_error"
    assert record is not None and record["unscored_samples"] == 1
    assert record["kept_fraction"] == pytest.approx(7 / 8)  # 3 + 4 trained of 4 + 4 generated
    assert ledger.status(p[0].prompt_id).startswith("trained")


def test_groups_scored_while_a_step_computes_fill_the_next_batch(s, trainer_setup, scorer):
    cfg, trainer, tok, model = trainer_setup
    ledger = Ledger(s)
    trainer.feeder.top_up(0)
    p = take_prompts(s, 4)
    for x in p[:2]:
        s.publish(streams.SCORED, scored_group(x, tok, model, scorer))
    compute, new = trainer.step_loss.run, []

    def forward_backward_while_groups_arrive(groups):
        # groups scored during the step: two usable, one all-correct (to be dropped at once)
        s.publish(streams.SCORED, scored_group(p[2], tok, model, scorer))
        s.publish(streams.SCORED, scored_group(p[3], tok, model, scorer, n_correct=K))
        deadline = time.monotonic() + 20
        while ledger.status(p[3].prompt_id) == "enqueued" and time.monotonic() < deadline:
            time.sleep(0.05)
        new.extend(take_prompts(s, 1))  # the drop freed room: the feeder topped up meanwhile
        assert len(new) == 1
        s.publish(streams.SCORED, scored_group(new[0], tok, model, scorer))
        while len(trainer.admission.next.groups) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        return compute(groups)

    trainer.step_loss.run = forward_backward_while_groups_arrive
    record = None
    while record is None:
        record = trainer.run_once()
    trainer.step_loss.run = compute
    assert record["step"] == 1
    assert ledger.status(p[3].prompt_id) == "dropped:zero_variance"
    assert trainer.admission.current.prompt_ids() == {p[2].prompt_id, new[0].prompt_id}  # the next step's
    assert not trainer.admission.next.groups
    assert trainer.run_once()["step"] == 2  # no waiting: its batch was full when step 1 ended
    assert ledger.counts()["trained"] == 4


def test_restarted_trainer_resumes_from_the_announced_version(s, trainer_setup, scorer, make_config):
    cfg, trainer, tok, model = trainer_setup
    trainer.feeder.top_up(0)
    for p in take_prompts(s, 2):
        s.publish(streams.SCORED, scored_group(p, tok, model, scorer))
    while trainer.version < 1:
        trainer.run_once()
    cursor = trainer.feeder.cursor
    resumed = RLTrainer(cfg, s, "trainer-test")
    assert resumed.version == 1
    assert resumed.feeder.cursor == cursor
    assert resumed.feeder.top_up(1) == 2  # two slots were freed by the trained groups


# -- T1 objective on the engine: entropy bonus, dynamic anchor, keep rule, resume --------------
def run_steps(trainer, s, tok, model, scorer, n, n_correct=2):
    """Steps on groups whose behaviour log-probs are the current policy's (on-policy), as a
    generator that loaded the trainer's latest version would report them."""
    records = []
    while len(records) < n:
        trainer.feeder.top_up(trainer.version)
        for p in take_prompts(s, 2):
            s.publish(streams.SCORED, scored_group(p, tok, trainer.engine.module.lm, scorer,
                                                   version=trainer.version, n_correct=n_correct))
        for _ in range(20):
            rec = trainer.run_once()
            if rec:
                records.append(rec)
                break
    return records


def make_trainer(make_config, redis_server, s, run_dir, *overrides):
    cfg = make_config("trainer.groups_per_step=2", "trainer.total_steps=10", "trainer.lr=1e-3",
                      f"redis.prefix={s.prefix}", f"run_dir={run_dir}", *overrides,
                      redis_url=redis_server.url)
    return cfg, RLTrainer(cfg, s, "trainer-test")


def other_streams(redis_server):
    import uuid
    return streams.Streams(streams.connect(redis_server.url), prefix=f"test-{uuid.uuid4().hex[:8]}")


def test_entropy_bonus_alone_raises_entropy(s, make_config, redis_server, tiny_model_dir, scorer, tmp_path):
    _, trainer = make_trainer(make_config, redis_server, s, tmp_path / "ent", "trainer.entropy_coef=1.0",
                              "trainer.kl_mode=none", "trainer.drop_zero_variance=false", "trainer.lr=3e-3")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    # all samples correct: zero advantages, so only the entropy term moves the policy
    records = run_steps(trainer, s, tok, model, scorer, 4, n_correct=K)
    assert all(r["adv_abs_max"] == 0 for r in records)
    assert records[-1]["entropy"] > records[0]["entropy"] + 1e-3


def test_anchor_rotation_resets_the_kl_reference_at_the_interval(s, make_config, redis_server,
                                                                 tiny_model_dir, scorer, tmp_path):
    _, trainer = make_trainer(make_config, redis_server, s, tmp_path / "anchor",
                              "trainer.anchor_interval=2", "trainer.kl_mode=reward", "trainer.kl_coef=0.01")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    r = run_steps(trainer, s, tok, model, scorer, 3)
    assert [x["anchor_rotated"] for x in r] == [False, True, False]
    assert [x["anchor_version"] for x in r] == [0, 2, 2]
    # the KL of the samples' behaviour policy (here the policy itself) to the anchor
    assert abs(r[0]["seq_kl_mean"]) < 1e-5  # step 1: policy v0 == anchor v0
    assert abs(r[1]["seq_kl_mean"]) > 1e-4  # step 2: policy v1 drifted from anchor v0
    assert abs(r[2]["seq_kl_mean"]) < 1e-5  # step 3: anchor rotated to v2 == policy v2


def test_balanced_keep_rule_trains_on_a_subset(s, make_config, redis_server, tiny_model_dir, scorer, tmp_path):
    _, trainer = make_trainer(make_config, redis_server, s, tmp_path / "keep", "trainer.keep_rule=balanced")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    (rec,) = run_steps(trainer, s, tok, model, scorer, 1, n_correct=1)  # 1 right, 3 wrong per group
    assert rec["kept_fraction"] == pytest.approx(0.5)  # 1 right + 1 wrong of 4
    assert rec["accuracy"] == pytest.approx(0.5)


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(s, make_config, redis_server,
                                                                  tiny_model_dir, scorer, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    _, straight = make_trainer(make_config, redis_server, s, tmp_path / "straight")
    reference = run_steps(straight, s, tok, model, scorer, 3)

    s2 = other_streams(redis_server)
    torch.manual_seed(0)
    cfg, first = make_trainer(make_config, redis_server, s2, tmp_path / "resumed")
    before = run_steps(first, s2, tok, model, scorer, 2)
    del first  # the process dies after step 2 committed
    resumed = RLTrainer(cfg, s2, "trainer-test")
    assert resumed.version == 2 and resumed.anchor.version == 0
    after = run_steps(resumed, s2, tok, model, scorer, 1)
    losses = [r["loss"] for r in before + after]
    assert losses == pytest.approx([r["loss"] for r in reference], abs=1e-6)
    # no group trained twice, none lost
    counts = Ledger(s2).counts()
    assert counts["trained"] == 6 and Ledger(s2).audit().get("trained") == 6
