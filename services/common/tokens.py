"""A formatted prompt's token ids, the same wherever a prompt is encoded (SFT, the generator,
evaluation): the tokenizer's encoding with no special tokens added, because the prompt format
(``services/data/prompt_format.py``) already wrote whatever special tokens the model expects."""

from __future__ import annotations


def prompt_token_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]
