"""SFT sequence packing: several examples in one row must train exactly as separate rows."""

from __future__ import annotations

import math

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import pytest

from services.trainer.sft import run_sft, sft_loss_sum, tokenize_pairs

PAIRS = [(f"Q:{a}+{b}\nA:", f"\\boxed{{{a + b}}}") for a, b in [(1, 2), (13, 40), (7, 7), (250, 3), (9, 11)]]


def test_sft_loss_is_the_hf_cross_entropy_packed_or_not(tiny_model_dir, make_config):
    """The response-only, chunked SFT loss (rows of their own, or packed) equals Hugging Face's
    own cross-entropy over labelled response tokens, with padded rows and an attention mask."""
    from services.trainer.ds_engine import build_engine
    from services.trainer.policy import Policy

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    examples = tokenize_pairs(tok, PAIRS)
    rows = [p + r for p, r in examples]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.eos_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ((p, r), row) in enumerate(zip(examples, rows)):
        ids[i, :len(row)] = torch.tensor(row)
        labels[i, len(p):len(row)] = torch.tensor(r)
        mask[i, :len(row)] = 1
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    engine = build_engine(Policy(model, chunk_tokens=5), make_config().trainer, 1e-3)
    n_tokens = sum(len(r) for _, r in examples)
    for row_tokens in (0, 40):
        with torch.no_grad():
            loss = sft_loss_sum(engine, examples, row_tokens, tok.eos_token_id).item() / n_tokens
        assert math.isclose(loss, reference, rel_tol=1e-5)


def test_micro_batched_sft_equals_the_one_pass_step(tmp_path, make_config, tiny_model_dir):
    outs = []
    # adam_eps=1: AdamW then moves by ~lr x gradient, so a wrong gradient scale shows (its 1e-8
    # default makes near sign-steps that turn float noise in near-zero gradients into lr moves)
    for budget in (0, 30):  # 30 tokens: about two examples a micro-batch
        cfg = make_config("trainer.sft_steps=3", "trainer.sft_batch=5", "trainer.sft_lr=0.1",
                          "trainer.adam_eps=1.0",
                          f"trainer.sft_micro_batch_tokens={budget}", f"run_dir={tmp_path / str(budget)}")
        losses = []
        outs.append((run_sft(cfg, tiny_model_dir, tmp_path / f"sft-{budget}", data=PAIRS,
                             progress=lambda step, loss: losses.append(loss)), losses))
    (whole, l_whole), (split, l_split) = outs
    assert l_split == pytest.approx(l_whole, rel=1e-5)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(split / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    # the SFT scalars went to TensorBoard, beside RL's
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "30" / "tensorboard"))
    acc.Reload()
    assert {"sft/loss", "sft/lr", "sft/grad_norm", "sft/micro_batches"} <= set(acc.Tags()["scalars"])
    assert all(e.value >= 2 for e in acc.Scalars("sft/micro_batches"))  # really split
    assert [e.value for e in acc.Scalars("sft/loss")] == pytest.approx(l_split, rel=1e-6)


def test_packed_sft_under_zero3_lowers_the_loss_and_saves_the_full_model(tmp_path, make_config,
                                                                         tiny_model_dir):
    cfg = make_config("trainer.sft_steps=20", "trainer.sft_batch=5", "trainer.sft_lr=3e-3",
                      "trainer.sft_pack_tokens=48", "trainer.zero_stage=3",
                      "trainer.zero3_param_persistence_threshold=0")
    losses = []
    out = run_sft(cfg, tiny_model_dir, tmp_path / "sft", data=PAIRS * 4,
                  progress=lambda step, loss: losses.append(loss))
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    # ZeRO-3 partitions every parameter (threshold 0): the saved model must be the gathered one
    tuned = load_file(str(out / "model.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    assert {k: v.shape for k, v in tuned.items()} == {k: v.shape for k, v in base.items()}
    assert not torch.equal(tuned["lm_head.weight"], base["lm_head.weight"])
