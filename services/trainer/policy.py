"""The causal LM as the trainer uses it: log-probs (and entropy) of chosen tokens only.

Memory is the reason this module exists. A Hugging Face forward computes logits at every position
(``[rows, width, vocab]``, 2.5 GB in fp32 for 8 x 512 tokens at Qwen2.5's vocabulary of 151936),
and the loss then holds a log-softmax and a probability copy of them for backward. Here:

- only the positions that score a token go through the LM head: the backbone's hidden states are
  indexed first, so the prompt's logits are never computed;
- the head, the log-softmax and the entropy run over chunks of ``chunk_tokens`` tokens, each
  under activation checkpointing: backward recomputes one chunk's logits at a time, so the step
  never holds more than one ``[chunk, vocab]`` fp32 block (and its softmax) per chunk in flight.
  Gradients are exactly those of the unchunked computation (``tests/unit/test_policy.py``).

``Policy`` wraps the HF model so DeepSpeed's engine (and ZeRO-3's parameter hooks, which attach
to the root module) sees one module whose forward is this whole computation.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def nucleus_mask(scaled_logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Tokens that top-p sampling can draw, by vLLM's rule (``apply_top_k_top_p_pytorch``):
    sort ascending, drop every token whose cumulative probability is <= 1 - p, always keep the
    most likely one. ``scaled_logits``: [M, V] after temperature; ``top_p``: [M]. -> bool [M, V]."""
    sorted_logits, order = scaled_logits.sort(dim=-1, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cum <= (1.0 - top_p).unsqueeze(-1)
    drop[:, -1] = False
    return torch.empty_like(drop).scatter_(-1, order, ~drop)


def per_token(value, like: torch.Tensor) -> torch.Tensor:
    """A sampling setting as a float32 tensor [M] on ``like``'s device (scalars broadcast)."""
    if isinstance(value, torch.Tensor):
        return value.to(device=like.device, dtype=torch.float32)
    return torch.full(like.shape[:1], float(value), dtype=torch.float32, device=like.device)


def _score_chunk(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                 temperature: torch.Tensor, top_p: torch.Tensor, with_entropy: bool):
    """One chunk: [c, H] hidden states -> log-prob of each target [c] and entropy [c].

    The log-prob is of the distribution the generator sampled from: temperature-scaled and, with
    top_p < 1, renormalised over the nucleus (the sampled token is always counted in it, so a
    token that drifted just outside the trainer's nucleus keeps a finite log-prob). The entropy
    is of the full temperature-scaled distribution: the bonus acts on the policy itself."""
    logits = head(hidden).float() / temperature.unsqueeze(-1)
    logp_all = torch.log_softmax(logits, dim=-1)
    if bool((top_p < 1.0).any()):
        with torch.no_grad():
            keep = nucleus_mask(logits, top_p)
            keep.scatter_(-1, targets.unsqueeze(-1), True)
        kept = logits.masked_fill(~keep, float("-inf"))
        logp = kept.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(kept, dim=-1)
    else:
        logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logp, torch.zeros_like(logp)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def chunked_token_logprobs(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                           temperature=1.0, top_p=1.0, chunk_tokens: int = 1024,
                           with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden: [M, H] at the positions that predict ``targets`` [M] -> (log-probs [M], entropy [M]).
    ``temperature`` and ``top_p``: what each token was sampled with (a float, or a tensor [M]).

    With gradients enabled each chunk runs under (non-reentrant) activation checkpointing, so
    only its two [c] outputs are kept for backward; without them the chunks simply run in turn."""
    chunk = chunk_tokens if chunk_tokens > 0 else max(1, hidden.shape[0])
    temperature, top_p = per_token(temperature, targets), per_token(top_p, targets)
    logps, ents = [], []
    for start in range(0, hidden.shape[0], chunk):
        part = slice(start, start + chunk)
        args = (hidden[part], head, targets[part], temperature[part], top_p[part], with_entropy)
        if torch.is_grad_enabled():
            lp, ent = checkpoint(_score_chunk, *args, use_reentrant=False)
        else:
            lp, ent = _score_chunk(*args)
        logps.append(lp)
        ents.append(ent)
    if not logps:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat(logps), torch.cat(ents)


class Policy(torch.nn.Module):
    """The HF causal LM ``lm`` behind one forward: token ids in, the chosen tokens' log-probs out.

    ``score_at``: flat indices into ``input_ids.view(-1)`` of the positions whose next-token
    distribution scores ``targets`` (position p predicts the token at p + 1)."""

    def __init__(self, lm: torch.nn.Module, chunk_tokens: int = 1024) -> None:
        super().__init__()
        self.lm = lm
        self.chunk_tokens = chunk_tokens

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, score_at: torch.Tensor,
                targets: torch.Tensor, temperature=1.0, top_p=1.0,
                with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        # No attention mask: rows are right-padded (causal attention never looks right) and
        # packed rows restart position_ids per sequence, from which transformers builds the
        # block-diagonal mask (flash-attention: variable-length kernels, no mask at all).
        out = self.lm.base_model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        hidden = out.last_hidden_state.flatten(0, 1)[score_at]
        return chunked_token_logprobs(hidden, self.lm.get_output_embeddings(), targets,
                                      temperature, top_p, self.chunk_tokens, with_entropy)
