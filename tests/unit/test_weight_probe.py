"""The weight probe's pieces: fixed sequences, fp32 log-probs in eval mode, the comparison, and
how `t1 status` shows a sync. (The gate itself runs on the real engine in
tests/integration/test_generator.py.)"""

import math

import torch
from transformers import AutoModelForCausalLM

from services.cli import sync_summary
from services.common.config import ModelConfig
from services.common.weight_probe import max_difference, probe_logprobs, probe_token_ids
from services.trainer.tiny_model import build_tiny_model


def test_the_probe_sequences_are_fixed_and_within_every_tokenizer():
    a, b = probe_token_ids(151936, 4, 32), probe_token_ids(151936, 4, 32)
    assert a == b and len(a) == 4 and all(len(s) == 32 for s in a)
    assert max(max(s) for s in a) < 4096 and max(max(s) for s in probe_token_ids(100, 2, 8)) < 100


def test_probe_logprobs_are_next_token_logprobs_in_eval_mode(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        build_tiny_model(ModelConfig(hidden_size=64, num_layers=2), tmp_path / "m"), dtype=torch.float32)
    ids = probe_token_ids(model.config.vocab_size, 2, 6)
    model.train()
    got = probe_logprobs(model, ids)
    assert model.training  # the mode comes back
    with torch.no_grad():
        logp = torch.log_softmax(model.eval()(torch.tensor(ids)).logits, -1)
    want = [[logp[i, j, ids[i][j + 1]].item() for j in range(5)] for i in range(2)]
    assert max_difference(want, got) < 1e-6
    assert max_difference(want, [row[:-1] for row in got]) == math.inf  # shapes differ


def test_sync_summary():
    assert sync_summary({"version": 3, "passed": True, "seconds": 0.25, "gate_max_difference": 2e-6,
                         "gate_seconds": 0.04}) == "v3 in 0.25 s, gate max |Δ| 2e-06 in 40 ms"
    refused = sync_summary({"version": 4, "passed": False, "reason": "failed the gate: ..."})
    assert "v4 refused" in refused and "failed the gate" in refused
    assert sync_summary({"version": 5, "passed": True, "seconds": 0.5, "via": "broadcast"}) \
        == "v5 by broadcast in 0.50 s, no probe"


def test_broadcast_summary():
    from services.cli import broadcast_summary

    assert broadcast_summary({"version": 2, "ok": True, "members": ["a", "b"], "bytes": 2_500_000,
                              "seconds": 0.125}) == "v2 to 2 generator(s), 2.5 MB in 0.12 s"
    failed = broadcast_summary({"version": 3, "ok": False, "seconds": 10.0, "reason": "timed out",
                                "absent": ["generator-1"]})
    assert "v3 given up" in failed and "timed out" in failed and "generator-1" in failed
