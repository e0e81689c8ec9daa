"""The trainer's chunked, response-only log-probs against the materialised-logits reference:
values and gradients (1e-5), top-p renormalisation by vLLM's rule, and the token layout."""

import pytest
import torch

from services.trainer.objective import token_logprobs_and_entropy
from services.trainer.packing import assign_rows, micro_batches, pack, padded_tokens
from services.trainer.policy import Policy, chunked_token_logprobs, nucleus_mask


def head_and_hidden(m=37, h=16, v=50, seed=0):
    torch.manual_seed(seed)
    head = torch.nn.Linear(h, v, bias=False)
    hidden = torch.randn(m, h, requires_grad=True)
    targets = torch.randint(0, v, (m,))
    return head, hidden, targets


@pytest.mark.parametrize("chunk", [1, 5, 37, 1000])
def test_chunked_logprobs_and_entropy_equal_the_full_logits_reference(chunk):
    head, hidden, targets = head_and_hidden()
    weights = torch.randn(2, hidden.shape[0])  # an arbitrary loss of both outputs

    ref_lp, ref_ent = token_logprobs_and_entropy(head(hidden), targets, temperature=1.3)
    (weights[0] @ ref_lp + weights[1] @ ref_ent).backward()
    ref_grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None

    lp, ent = chunked_token_logprobs(hidden, head, targets, temperature=1.3, chunk_tokens=chunk)
    (weights[0] @ lp + weights[1] @ ent).backward()
    torch.testing.assert_close(lp, ref_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden.grad, ref_grads[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head.weight.grad, ref_grads[1], rtol=1e-5, atol=1e-5)


def test_chunks_hold_one_chunk_of_logits_for_backward():
    """What autograd keeps for backward: with chunks, only the [M] outputs' inputs (the hidden
    states), not a [M, V] block per chunk -- the point of the checkpointing."""
    head, hidden, targets = head_and_hidden(m=64, h=8, v=4096)
    saved = []

    def pack_hook(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
        chunked_token_logprobs(hidden, head, targets, chunk_tokens=16)
    assert max(saved) < 64 * 4096  # no full [M, V] tensor was saved
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
        token_logprobs_and_entropy(head(hidden), targets)
    assert max(saved) >= 64 * 4096  # the reference keeps the whole logits


def vllm_nucleus(scaled_logits, p):
    """vLLM's apply_top_k_top_p_pytorch (top-p only), restated: ascending sort, cumulative
    probabilities, drop <= 1 - p, keep the top token, scatter back."""
    logits = scaled_logits.clone()
    logits_sort, logits_idx = logits.sort(dim=-1, descending=False)
    probs_sum = torch.cumsum(logits_sort.softmax(dim=-1), dim=-1)
    mask = probs_sum <= 1 - p
    mask[:, -1] = False
    logits_sort.masked_fill_(mask, -float("inf"))
    return logits.scatter_(dim=-1, index=logits_idx, src=logits_sort)


def test_top_p_logprobs_are_the_renormalised_nucleus_as_vllm_computes_it():
    head, hidden, targets = head_and_hidden(m=200, v=30)
    with torch.no_grad():
        scaled = head(hidden).float() / 1.2
        vllm_logp = vllm_nucleus(scaled, 0.8).log_softmax(-1)
        keep = nucleus_mask(scaled, torch.full((200,), 0.8))
    assert torch.equal(keep, torch.isfinite(vllm_logp))
    assert 1 < keep.sum(-1).float().mean() < 30  # a real truncation, not all or one token
    # tokens the generator could have drawn: their log-probs are vLLM's processed_logprobs
    drawable = torch.isfinite(vllm_logp.gather(-1, targets[:, None]).squeeze(-1))
    lp, _ = chunked_token_logprobs(hidden, head, targets, temperature=1.2, top_p=0.8, chunk_tokens=7)
    ref = vllm_logp.gather(-1, targets[:, None]).squeeze(-1)
    assert drawable.sum() > 20
    torch.testing.assert_close(lp[drawable], ref[drawable], rtol=1e-5, atol=1e-5)
    # a token outside the nucleus keeps a finite log-prob (counted into its own nucleus)
    assert torch.isfinite(lp).all() and (~drawable).sum() > 0
    full, _ = chunked_token_logprobs(hidden, head, targets, temperature=1.2)
    assert (lp[drawable] >= full[drawable] - 1e-6).all()  # renormalised over less mass
    lp.sum().backward()  # differentiable through the renormalisation
    assert torch.isfinite(hidden.grad).all()


def test_per_token_sampling_settings():
    head, hidden, targets = head_and_hidden(m=10)
    temp = torch.tensor([1.0] * 5 + [2.0] * 5)
    lp, _ = chunked_token_logprobs(hidden, head, targets, temperature=temp, chunk_tokens=3)
    a, _ = chunked_token_logprobs(hidden[:5], head, targets[:5], temperature=1.0)
    b, _ = chunked_token_logprobs(hidden[5:], head, targets[5:], temperature=2.0)
    torch.testing.assert_close(lp, torch.cat([a, b]))


def test_layout_rows_and_scored_positions():
    seqs = [([1, 2], [3, 4, 5]), ([6], [7]), ([8, 9, 10], [11, 12])]
    one = pack(seqs, row_tokens=0, pad_id=0)
    assert one.input_ids.shape == (3, 5)
    flat = one.input_ids.view(-1)
    # position p scores the token at p + 1: the token before each response token
    assert flat[one.score_at + 1].tolist() == one.targets.tolist() == [3, 4, 5, 7, 11, 12]
    assert one.seq_index.tolist() == [0, 0, 0, 1, 2, 2] and one.lengths == [3, 1, 2]
    packed = pack(seqs, row_tokens=8, pad_id=0)
    assert packed.input_ids.shape == (2, 7)  # rows: seq 0 + seq 1 (7), seq 2 (5)
    flat = packed.input_ids.view(-1)
    assert flat[packed.score_at + 1].tolist() == [3, 4, 5, 7, 11, 12]
    assert packed.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1]  # restarts per sequence
    with pytest.raises(ValueError, match="empty prompt"):
        pack([([], [1, 2])], 0, 0)


def test_micro_batches_split_sequences_by_the_padded_budget():
    lengths = [5, 5, 5, 5, 5]
    assert micro_batches(lengths, 0) == [[0, 1, 2, 3, 4]]
    assert micro_batches(lengths, 12) == [[0, 1], [2, 3], [4]]
    assert micro_batches(lengths, 1) == [[i] for i in range(5)]  # over budget: one each
    assert micro_batches([2, 18], 30) == [[0], [1]]  # padding to 18 makes 2 x 18 = 36 > 30
    assert padded_tokens([2, 18], 20) == 20 and assign_rows([2, 18], 20) == [[0, 1]]
    assert micro_batches([2, 18], 30, row_tokens=20) == [[0, 1]]  # packed: 20 tokens


def test_policy_scores_packed_and_padded_layouts_alike(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    policy = Policy(lm, chunk_tokens=4)
    g = torch.Generator().manual_seed(0)
    seqs = [(torch.randint(3, 30, (n,), generator=g).tolist(), torch.randint(3, 30, (m,), generator=g).tolist())
            for n, m in [(5, 7), (3, 2), (8, 11)]]
    with torch.no_grad():
        results = []
        for row_tokens in (0, 64):
            b = pack(seqs, row_tokens, pad_id=0)
            results.append(policy(b.input_ids, b.position_ids, b.score_at, b.targets))
        # the reference: each sequence alone through the HF forward with full logits
        ref = []
        for p, r in seqs:
            logits = lm(torch.tensor([p + r])).logits[0, len(p) - 1:-1]
            ref.append(token_logprobs_and_entropy(logits, torch.tensor(r))[0])
    for logp, _ in results:
        torch.testing.assert_close(logp, torch.cat(ref), rtol=1e-5, atol=1e-5)
