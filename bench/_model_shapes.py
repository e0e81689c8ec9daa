"""What the weight benchmarks share: the Qwen2.5-0.5B shape, built at random, and the plain
page-cache read of a model's safetensors bytes (the peer a disk sync is held against)."""

from __future__ import annotations

import time
from pathlib import Path

QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                  max_position_embeddings=1024, tie_word_embeddings=True, rope_theta=1000000.0)


def build_qwen_shape(model_dir: Path, tokenizer_src: Path) -> Path:
    """A random model of the Qwen2.5-0.5B shape, saved in bf16 with ``tokenizer_src``'s tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from services.common import weights

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**QWEN25_05B, torch_dtype="bfloat16")).to(torch.bfloat16)
    model.save_pretrained(model_dir, safe_serialization=True)
    weights.copy_tokenizer_files(tokenizer_src, model_dir)
    return model_dir


def plain_read_seconds(model_dir: Path) -> float:
    t0 = time.perf_counter()
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with f.open("rb") as fh:
            while fh.read(1 << 24):
                pass
    return time.perf_counter() - t0
