"""The dynamic anchor: a frozen reference model for the KL term, rotated during training.

T1 regularises towards an anchor that moves with the policy instead of the fixed initial model:
every ``interval`` policy versions the anchor becomes a copy of the policy (``hard``) or moves a
step towards it (``ema``). Its version travels in logs and checkpoints.
"""

from __future__ import annotations

import torch


class Anchor:
    def __init__(self, model: torch.nn.Module, interval: int, mode: str = "hard",
                 ema_decay: float = 0.9, version: int = 0) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
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

    @torch.no_grad()
    def forward_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def state_dict(self) -> dict:
        return {"version": self.version, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.version = int(state["version"])
