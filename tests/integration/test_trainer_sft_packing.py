"""SFT sequence packing: several examples in one row must train exactly as separate rows."""

from __future__ import annotations

import math

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.trainer.sft import encode_batch, encode_packed, run_sft

PAIRS = [(f"Q:{a}+{b}\nA:", f"\\boxed{{{a + b}}}") for a, b in [(1, 2), (13, 40), (7, 7), (250, 3), (9, 11)]]


def test_packed_rows_match_separate_rows(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    packed = encode_packed(tok, PAIRS, row_tokens=40)
    plain = encode_batch(tok, PAIRS)
    assert packed["input_ids"].shape[0] < len(PAIRS)  # packing happened
    with torch.no_grad():
        packed_out = model(**packed, use_cache=False)
        plain_out = model(**plain)
    # the same token-level mean over response tokens
    assert math.isclose(packed_out.loss.item(), plain_out.loss.item(), rel_tol=1e-5)
    # each example's logits inside a packed row equal its own: attention stays within it
    lengths = plain["attention_mask"].sum(1).tolist()
    starts = (packed["position_ids"] == 0).nonzero().tolist()
    for i, n in enumerate(lengths):
        row, at = next((r, a) for r, a in starts
                       if torch.equal(packed["input_ids"][r, a:a + n], plain["input_ids"][i, :n]))
        torch.testing.assert_close(packed_out.logits[row, at:at + n], plain_out.logits[i, :n],
                                   rtol=1e-5, atol=1e-5)


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
