"""Offline evaluation and T1's inference-scaling measurement.

Uses the generator's vLLM engine and the verifier's scorer in one process (like the demo, this
module orchestrates; the services themselves never import each other). One engine evaluates
several checkpoints by reloading weights in place.

- ``accuracy``: greedy accuracy, sampled pass@1, pass@k (unbiased estimator) and maj@k on held-out
  prompts.
- ``scaling``: the reasoning is cut at a token budget; a response that has not finished by then
  is forced to answer (`` \\boxed{`` is appended and the model completes it greedily), and the
  answer is verified. Accuracy as a function of the budget is T1's inference-scaling curve.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from services.common.config import T1Config
from services.common.verify_api import VerifyOptions
from services.data.loaders import MathProblem
from services.data.prompt_source import first, prompt_source

FORCE_ANSWER = " \\boxed{"


def heldout_problems(cfg: T1Config, n: int | None, tokenizer=None) -> list[MathProblem]:
    """The reported problems: the first ``n`` of ``data.eval`` (all when None), else the task's
    held-out problems, never seen by SFT or RL (``n`` None: ``eval_problems``); ``tokenizer``
    for a chat-style ``prompt``."""
    source = prompt_source(cfg, "eval", tokenizer)
    if n is None and source.size is None:
        n = cfg.eval_problems
    return first(source, n)


def validation_problems(cfg: T1Config, n: int, tokenizer=None) -> list[MathProblem]:
    """Problems for choosing when to stop (SFT's plateau) without looking at the problems that
    are finally reported: the task's validation bucket."""
    return first(prompt_source(cfg, "validation", tokenizer), n)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass
class Accuracy:
    greedy: float
    pass1: float
    pass_k: float
    maj_k: float
    k: int
    n_problems: int
    # per problem, in order: greedy correct (0/1) and the share of the k samples correct, so two
    # models evaluated on the same problems can be compared pairwise (``paired_gain``)
    greedy_each: tuple[float, ...] = ()
    pass1_each: tuple[float, ...] = ()


def paired_gain(new: Accuracy, old: Accuracy, metric: str) -> tuple[float, float | None]:
    """``new - old`` for ``metric`` ("greedy" or "pass1") in points, and the standard error of
    that difference over the problems both were evaluated on (None without per-problem results).
    Pairing removes the spread of problem difficulty, which both models share."""
    gain = 100 * (getattr(new, metric) - getattr(old, metric))
    a, b = getattr(new, f"{metric}_each"), getattr(old, f"{metric}_each")
    n = len(a)
    if n < 2 or len(b) != n:
        return gain, None
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / n
    return gain, 100 * math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n)


class Evaluator:
    def __init__(self, engine, scorer, tick: Callable[[], None] | None = None) -> None:
        self.engine = engine  # services.generator.engine.RolloutEngine
        self.scorer = scorer  # services.verifier.scoring.Scorer
        self.tick = tick  # called as each problem's greedy answer or samples complete
        self._greedy: tuple[tuple, list] | None = None

    def greedy(self, prompts: list[str], max_tokens: int) -> list:
        """One greedy sample per prompt. Greedy decoding is deterministic, so the last call's
        samples serve a repeat on the same weights (``scaling`` after ``accuracy``)."""
        key = (prompts, max_tokens, self.engine.weight_updates)
        if self._greedy is not None and self._greedy[0] == key:
            return self._greedy[1]
        samples = [g.samples[0] for g in self.engine.generate(prompts, self.engine.sampling_params(
            n=1, temperature=0.0, max_tokens=max_tokens, top_p=1.0), self.tick)]
        self._greedy = (key, samples)
        return samples

    def _verdicts(self, texts_finish_gold: list[tuple[str, str, str]]):
        """One verdict per (response, finish reason, gold), in order, in one scorer batch."""
        items = [(text, gold, "math", VerifyOptions(finish_reason="stop" if f == "stop" else "length"))
                 for text, f, gold in texts_finish_gold]
        return self.scorer.score_batch(items)

    def sampled(self, problems: list[MathProblem], k: int, temperature: float,
                max_tokens: int) -> list[tuple[list, list]]:
        """Per problem, ``k`` samples (top-p 1) and their verdicts against its gold."""
        groups = self.engine.generate([p.prompt for p in problems], self.engine.sampling_params(
            n=k, temperature=temperature, max_tokens=max_tokens, top_p=1.0), self.tick)
        return [(g.samples, self._verdicts([(x.text, x.finish_reason, p.gold) for x in g.samples]))
                for p, g in zip(problems, groups)]

    def accuracy(self, problems: list[MathProblem], k: int, temperature: float,
                 max_tokens: int, records: list[dict] | None = None) -> Accuracy:
        """``records``, when given, receives one dict per problem: its greedy and sampled
        responses with their verdicts (the per-problem file beside a report)."""
        greedy = self.greedy([p.prompt for p in problems], max_tokens)
        sampled = self.sampled(problems, k, temperature, max_tokens)
        greedy_each, pass1_each = [], []
        passk = maj = 0.0
        for p, g, (samples, verdicts) in zip(problems, greedy, sampled):
            gv = self._verdicts([(g.text, g.finish_reason, p.gold)])[0]
            greedy_each.append(float(gv.correct))
            c = sum(v.correct for v in verdicts)
            pass1_each.append(c / k)
            passk += pass_at_k(k, c, k)
            votes = Counter(v.extracted for v in verdicts if v.extracted is not None)
            top = votes.most_common(1)[0][0] if votes else None
            if votes:
                maj += any(v.correct for v in verdicts if v.extracted == top)
            if records is not None:
                records.append({
                    **_problem_record(p), "greedy": _response(g, gv),
                    "samples": [_response(x, v) for x, v in zip(samples, verdicts)],
                    "pass1": c / k, "majority_answer": top})
        n = len(problems)
        return Accuracy(sum(greedy_each) / n, sum(pass1_each) / n, passk / n, maj / n, k, n,
                        tuple(greedy_each), tuple(pass1_each))

    def scaling(self, problems: list[MathProblem], budgets: list[int],
                records: list[dict] | None = None) -> dict[int, float]:
        """Greedy accuracy when the reasoning may use at most ``budget`` tokens (``records``:
        each problem's dict gets ``budgets``, budget -> correct, made if empty).

        A greedy response cut at ``budget`` tokens is the first ``budget`` tokens of the greedy
        response at the largest budget, so one generation serves every budget; per budget only
        the forced answers of the responses that had not finished are generated."""
        prompts = [p.prompt for p in problems]
        full = self.greedy(prompts, max(budgets))
        out = {}
        for budget in budgets:
            texts = [s.text for s in full]
            unfinished = [i for i, s in enumerate(full)
                          if s.finish_reason != "stop" or len(s.token_ids) > budget]
            if unfinished:
                for i in unfinished:
                    texts[i] = self.engine.tokenizer.decode(full[i].token_ids[:budget],
                                                            skip_special_tokens=True)
                forced = self.engine.generate(
                    [prompts[i] + texts[i] + FORCE_ANSWER for i in unfinished],
                    self.engine.sampling_params(n=1, temperature=0.0, max_tokens=12, top_p=1.0))
                for i, g in zip(unfinished, forced):
                    texts[i] = texts[i] + FORCE_ANSWER + g.samples[0].text.split("}")[0] + "}"
            verdicts = self._verdicts([(t, "stop", p.gold) for t, p in zip(texts, problems)])
            correct = sum(v.correct for v in verdicts)
            out[budget] = correct / len(problems)
            if records is not None:
                if not records:
                    records.extend(_problem_record(p) for p in problems)
                for record, v in zip(records, verdicts):
                    record.setdefault("budgets", {})[budget] = v.correct
        return out


def _problem_record(p: MathProblem) -> dict:
    return {"source": p.source, "index": p.index, "prompt": p.prompt, "gold": p.gold}


def _response(sample, verdict) -> dict:
    return {"text": sample.text, "finish_reason": sample.finish_reason, "correct": verdict.correct,
            "extracted": verdict.extracted, "status": verdict.status}


def greedy_hf(model, tokenizer, prompts: list[str], max_tokens: int,
              batch: int = 64) -> list[tuple[str, str]]:
    """(response, finish reason) per prompt, greedy, with transformers' ``generate`` on an
    in-memory model: no engine start-up, cheap enough to call during SFT to find its plateau."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out_texts = []
    try:
        for i in range(0, len(prompts), batch):
            enc = tokenizer(prompts[i:i + batch], return_tensors="pt", padding=True,
                            add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            for row in out[:, enc["input_ids"].shape[1]:]:
                ended = (row == tokenizer.eos_token_id).nonzero()
                stop = int(ended[0]) if len(ended) else len(row)
                out_texts.append((tokenizer.decode(row[:stop], skip_special_tokens=True),
                                  "stop" if len(ended) else "length"))
    finally:
        tokenizer.padding_side = side
    return out_texts


def greedy_accuracy_hf(model, tokenizer, problems: list[MathProblem], max_tokens: int, scorer) -> float:
    """Greedy held-out accuracy of an in-memory model (see ``greedy_hf``)."""
    responses = greedy_hf(model, tokenizer, [p.prompt for p in problems], max_tokens)
    items = [(text, p.gold, "math", VerifyOptions(finish_reason=f))
             for (text, f), p in zip(responses, problems)]
    return sum(v.correct for v in scorer.score_batch(items)) / max(len(problems), 1)


def plot_scaling(curves: dict[str, dict[int, float]], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        budgets = sorted(curve)
        ax.plot(budgets, [curve[b] for b in budgets], marker="o", label=label)
    ax.set(xlabel="reasoning budget (tokens before the answer is forced)",
           ylabel="held-out accuracy (greedy)", title="Inference scaling", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pass_rates(cfg: T1Config, model: str, problems: list[MathProblem], k: int,
               temperature: float) -> list[float]:
    """Each problem's share of ``k`` sampled answers (at ``temperature``, top-p 1) the verifier
    accepts: T1's difficulty filter keeps the problems a model does not already solve."""
    from services.generator.engine import RolloutEngine
    from services.verifier.scoring import Scorer

    engine, scorer = RolloutEngine(model, cfg.generator), Scorer(cfg.verifier)
    try:
        sampled = Evaluator(engine, scorer).sampled(problems, k, temperature, cfg.generator.max_tokens)
        return [sum(v.correct for v in verdicts) / k for _, verdicts in sampled]
    finally:
        scorer.close()
        engine.shutdown()


def filter_record(p: MathProblem, rate: float) -> dict:
    """A kept problem as a record ``data.train`` reads back (MATH's problem/answer, or
    prompt/gold for a record that was a prompt already), its pass rate beside it."""
    # a verbatim record stays one: its prompt as written, which the loader formats again
    body = {"prompt": p.problem, "gold": p.gold} if p.verbatim else {"problem": p.problem, "answer": p.gold}
    return {**body, "pass_rate": rate, "source": p.source, "index": p.index}


def generation_passes(accuracy: bool, budgets: list[int], max_tokens: int) -> int:
    """Batches of one generation per problem an evaluation of one checkpoint makes: greedy and
    samples for accuracy, and a greedy pass at the largest budget unless accuracy's serves it."""
    return (2 if accuracy else 0) + (0 if accuracy and max(budgets) == max_tokens else 1)


def evaluate_checkpoints(cfg: T1Config, models: dict[str, str], n: int | None = 200, k: int = 8,
                         budgets: list[int] | None = None, progress=None,
                         accuracy: bool = True, problems: list[MathProblem] | None = None,
                         tick: Callable[[], None] | None = None) -> dict[str, dict]:
    """Accuracy, scaling curve and per-problem records for each checkpoint, on one engine
    reloaded in place, on ``problems`` (default: ``heldout_problems(cfg, n)``). ``progress(label,
    result)`` after each checkpoint; ``tick()`` as each problem's generation of a pass completes
    (``generation_passes`` of them per problem and checkpoint).

    All checkpoints must share an architecture (as the versions of one run do).
    """
    from services.generator.engine import RolloutEngine
    from services.verifier.scoring import Scorer

    budgets = budgets or default_budgets(cfg.generator.max_tokens)
    labels = list(models)
    engine = RolloutEngine(models[labels[0]], cfg.generator)
    problems = problems if problems is not None else heldout_problems(cfg, n, engine.tokenizer)
    scorer = Scorer(cfg.verifier)
    results = {}
    try:
        evaluator = Evaluator(engine, scorer, tick)
        for i, label in enumerate(labels):
            if i:
                engine.load_weights(models[label])
            records: list[dict] = []
            acc = (evaluator.accuracy(problems, k, cfg.eval_sampling_temperature, cfg.generator.max_tokens,
                                      records) if accuracy else None)
            results[label] = {"accuracy": acc, "scaling": evaluator.scaling(problems, budgets, records),
                              "problems": records}
            if progress:
                progress(label, results[label])
    finally:
        scorer.close()
        engine.shutdown()
    return results


def default_budgets(max_tokens: int) -> list[int]:
    return sorted({b for b in (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256) if b < max_tokens} | {max_tokens})
