"""The probe that proves a weight sync: fixed token sequences and their log-probs under a version.

The trainer computes it with the policy it just stepped (every rank: under ZeRO-3 the forward is
collective) and publishes it with the version's announcement. A generator that has loaded the
version scores the same sequences with its engine and serves the version only if every token's
log-prob agrees within ``generator.weight_gate_tolerance``: whatever went wrong between the
trainer's memory and the engine's (a file, a loader, a tied head, a dtype), the engine's own
numbers show it.
"""

from __future__ import annotations

import msgspec

# Sequences of token ids drawn once from a fixed seed: the same probe for every version, so a
# generator can compare versions as well.
_SEED = 20250120
_ID_RANGE = 4096  # below every tokenizer's size: vLLM refuses ids its tokenizer lacks


class WeightProbe(msgspec.Struct, frozen=True, kw_only=True):
    token_ids: list[list[int]]
    # logprobs[i][j]: log p(token_ids[i][j + 1] | token_ids[i][: j + 1]) under the version
    logprobs: list[list[float]]


def probe_token_ids(vocab_size: int, sequences: int, tokens: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(_SEED)
    high = min(vocab_size, _ID_RANGE)
    return torch.randint(0, high, (sequences, tokens), generator=g).tolist()


def probe_logprobs(lm, token_ids: list[list[int]], device=None):
    """Per-token log-probs of ``token_ids`` under ``lm`` (an HF causal LM) in fp32, in eval mode
    (no dropout), without gradients; the module's mode is restored."""
    import torch

    ids = torch.tensor(token_ids, device=device)
    was_training = lm.training
    lm.eval()
    try:
        with torch.no_grad():
            logits = lm(input_ids=ids).logits.float()
    finally:
        lm.train(was_training)
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return logp.cpu().tolist()


def max_difference(expected: list[list[float]], got: list[list[float]]) -> float:
    """Largest absolute difference; infinite when the shapes differ."""
    if len(expected) != len(got) or any(len(a) != len(b) for a, b in zip(expected, got)):
        return float("inf")
    return max((abs(x - y) for a, b in zip(expected, got) for x, y in zip(a, b)), default=0.0)
