"""The embedded default model: a tiny Qwen2-architecture LM with its own character tokenizer.

No model hub is reachable, so the default run builds its model here (random init) and saves it
as an ordinary Hugging Face directory. Everything downstream -- vLLM, DeepSpeed, the weight
publisher -- uses the real ``from_pretrained`` path, so pointing ``model.path`` at a Qwen2.5
checkpoint changes nothing else.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from services.common.config import ModelConfig

EOS = "<|endoftext|>"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with no merges: one token per byte, EOS doubling as padding.

    Byte-level like Qwen2's own tokenizer, because ``AutoTokenizer`` loads any ``qwen2`` model
    directory with the Qwen2 tokenizer class, which byte-level-encodes its input before the
    vocabulary lookup; a plain character vocabulary would silently lose spaces and newlines.
    """
    byte_symbols = pre_tokenizers.ByteLevel.alphabet()
    # Order by byte value so token ids are stable across runs.
    ordered = sorted(byte_symbols, key=lambda ch: _BYTE_OF[ch])
    vocab = {EOS: 0, **{ch: i + 1 for i, ch in enumerate(ordered)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character map (the ByteLevel alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


_BYTE_OF = {ch: b for b, ch in _bytes_to_unicode().items()}


def build_tiny_model(cfg: ModelConfig, out_dir: str | Path) -> Path:
    """Create the random-init model + tokenizer directory (idempotent: keeps an existing one)."""
    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    tokenizer = build_tokenizer()
    vocab_size = len(tokenizer)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0,
        torch_dtype="float32",
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(config)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                     bos_token_id=tokenizer.eos_token_id).save_pretrained(tmp)
    tmp.rename(out)
    return out
