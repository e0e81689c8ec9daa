"""The dynamic anchor: a frozen reference model for the KL term, rotated during training.

T1 regularises towards an anchor that moves with the policy instead of the fixed initial model:
every ``interval`` policy versions the anchor becomes a copy of the policy (``hard``) or moves a
step towards it (``ema``). Its version travels in logs and checkpoints.
"""

from __future__ import annotations

import contextlib

import torch

from services.trainer.packing import Packed
from services.trainer.policy import Policy


class Anchor:
    """``device``: where its log-probs are computed (the policy engine's). ``offload``: keep the
    weights in CPU memory between passes and move them to ``device`` only for the anchor pass
    (less device memory, a host-to-device copy per step)."""

    def __init__(self, model: torch.nn.Module, interval: int, mode: str = "hard",
                 ema_decay: float = 0.9, version: int = 0, device: torch.device | str = "cpu",
                 offload: bool = False, chunk_tokens: int = 1024) -> None:
        self.device = torch.device(device)
        self.offload = offload and self.device.type != "cpu"
        self.model = model.eval().to("cpu" if self.offload else self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.scorer = Policy(self.model, chunk_tokens)
        self.interval = interval
        self.mode = mode
        self.ema_decay = ema_decay
        self.version = version  # the policy version the anchor was last rotated to

    def due(self, policy_version: int) -> bool:
        return self.interval > 0 and policy_version > self.version and policy_version % self.interval == 0

    @torch.no_grad()
    def rotate(self, policy: torch.nn.Module, policy_version: int) -> None:
        # Under ZeRO-3 the caller gathers the policy's parameters first (dist.full_params).
        policy_params = dict(policy.named_parameters())
        for name, p in self.model.named_parameters():
            src = policy_params[name].detach().to(p.dtype)
            if self.mode == "hard":
                p.copy_(src)
            else:
                p.mul_(self.ema_decay).add_(src, alpha=1.0 - self.ema_decay)
        self.version = policy_version

    def maybe_rotate(self, policy: torch.nn.Module, policy_version: int) -> bool:
        if self.due(policy_version):
            self.rotate(policy, policy_version)
            return True
        return False

    @contextlib.contextmanager
    def on_device(self):
        """The weights on ``device`` for the duration (a no-op unless offloaded)."""
        if not self.offload:
            yield
            return
        self.model.to(self.device)
        try:
            yield
        finally:
            self.model.to("cpu")

    @torch.no_grad()
    def token_logprobs(self, batch: Packed, temperature: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
        """Log-probs [M] of the batch's scored tokens under the anchor (call inside ``on_device``)."""
        logp, _ = self.scorer(batch.input_ids, batch.position_ids, batch.score_at, batch.targets,
                              temperature, top_p, with_entropy=False)
        return logp

    def state_dict(self) -> dict:
        return {"version": self.version, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.version = int(state["version"])
