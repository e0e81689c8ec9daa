"""Held-out reward of a model directory, the same way for every contender of `t1 bench e2e`.

Sampled completions from Hugging Face ``generate`` (one sampler for all models, fixed seed) on
prompts from the task's held-out seed, scored by the project's verifier scorer with the RL
reward rule (1 correct, 0 wrong, -1 truncated/repetitive/garbled).
"""

from __future__ import annotations

import torch


def heldout_reward(model_dir: str, problems, k: int, max_tokens: int, temperature: float,
                   top_p: float, scorer, seed: int = 0) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.common.verify_api import VerifyOptions

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = tok.eos_token_id
    torch.manual_seed(seed)
    items = []
    # Prompts of equal length batch without padding; group them by length to stay exact.
    by_len: dict[int, list] = {}
    for p in problems:
        by_len.setdefault(len(tok(p.prompt, add_special_tokens=False)["input_ids"]), []).append(p)
    for group in by_len.values():
        ids = torch.tensor([tok(p.prompt, add_special_tokens=False)["input_ids"] for p in group])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=temperature, top_p=top_p, top_k=0,
                                 max_new_tokens=max_tokens, num_return_sequences=k,
                                 eos_token_id=eos, pad_token_id=eos)
        completions = out[:, ids.shape[1]:].tolist()
        for i, comp in enumerate(completions):
            p = group[i // k]
            stop = eos in comp
            text = tok.decode(comp[: comp.index(eos)] if stop else comp, skip_special_tokens=True)
            items.append((text, p.gold, "math",
                          VerifyOptions(finish_reason="stop" if stop else "length", strict=True)))
    verdicts = scorer.score_batch(items)
    n = len(verdicts)
    return {"reward": sum(v.reward for v in verdicts) / n,
            "accuracy": sum(v.correct for v in verdicts) / n, "samples": n}
