"""How a problem becomes the model's input: one object, used alike by SFT, RL (the feeder),
evaluation, scaling and synthesis, so that a model is trained and measured on the same prompt.

- ``plain``: ``prompt.template`` with ``{problem}`` (and optionally ``{instruction}``) filled
  in; the default ``Q:{problem}\\nA:`` is the procedural task's shape, which the tiny model
  knows.
- ``chat``: the tokenizer's own chat template (``apply_chat_template`` with the generation
  prompt): an optional system message, then the problem and T1's instruction (the final
  answer in ``\\boxed{}``) as the user's message -- how instruct models such as Qwen2.5 expect it.

Token ids are the tokenizer's encoding of the formatted text with no special tokens added
(``services.common.tokens.prompt_token_ids``): the template already holds whatever special
tokens the model wants, and SFT, the generator and the trainer encode it the same way.
"""

from __future__ import annotations

from typing import Any

from services.common.config import PromptConfig


class PromptFormat:
    def __init__(self, cfg: PromptConfig, tokenizer: Any = None) -> None:
        if cfg.style == "chat" and not getattr(tokenizer, "chat_template", None):
            what = "no tokenizer" if tokenizer is None else "a tokenizer without a chat template"
            raise ValueError(f"prompt.style=chat needs the model's chat template, and there is {what} "
                             "(use prompt.style=plain with a prompt.template)")
        self.cfg = cfg
        self.tokenizer = tokenizer

    def problem(self, text: str) -> str:
        """The prompt for a problem statement."""
        if self.cfg.style == "plain":
            # str.replace, not str.format: problems are full of LaTeX braces
            return self.cfg.template.replace("{problem}", text.strip()).replace("{instruction}", self.cfg.instruction)
        return self._chat(self.messages(text))

    def verbatim(self, prompt: str) -> str:
        """A record that is a prompt already (``{"prompt", "gold"}``): as is in the plain style,
        the user's whole message in the chat style."""
        if self.cfg.style == "plain":
            return prompt
        return self._chat(self.messages(prompt, verbatim=True))

    def messages(self, text: str, verbatim: bool = False) -> list[dict]:
        """The chat style's messages before the reply: the system prompt, if any, then the
        problem and the instruction (a verbatim prompt alone) as the user's message."""
        user = text
        if not verbatim:
            text = text.strip()
            user = f"{text}\n{self.cfg.instruction}" if self.cfg.instruction else text
        system = [{"role": "system", "content": self.cfg.system}] if self.cfg.system else []
        return [*system, {"role": "user", "content": user}]

    def conversation(self, messages: list[dict]) -> str:
        """The prompt of a chat record (SFT's ``messages``, all but the reply), roles as they
        are: the tokenizer's chat template where it has one, else ``role: content`` lines."""
        if getattr(self.tokenizer, "chat_template", None):
            return self._chat(messages)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "

    def _chat(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
