"""The verifier's REST contract (DESIGN.md §6), shared by the server and the Python client."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.common.code_tests import BadTestForm, parse_test

API_VERSION = "v1"
Task = Literal["math", "multiple_choice", "python"]


class VerifyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    finish_reason: Literal["stop", "length"] = Field(
        "stop", description="'length' marks a truncated response (penalised, never correct)")
    strict: bool = Field(True, description="math: accept only a \\boxed{} answer (RL setting); "
                                           "false also accepts 'final answer is ...' / 'Answer: ...'")
    extract: Literal["boxed", "lenient", "answer"] | None = Field(
        None, description="where the final answer is: 'boxed' (the last \\boxed{}, or a run of "
                          "boxes joined by ',' / 'and' / 'or'; the RL rule), 'lenient' (a box, else "
                          "the answer a 'final answer is ...' / 'Answer: ...' / '####' phrase "
                          "announces, else the last formula or number), 'answer' (the whole "
                          "response is the answer); unset: from 'strict'")

    @property
    def extraction(self) -> str:
        return self.extract or ("boxed" if self.strict else "lenient")
    choices: str = Field("ABCDE", min_length=2, max_length=26, pattern="^[A-Z]+$",
                         description="multiple_choice: the option letters")
    tests: list[str] = Field(
        default_factory=list, max_length=100,
        description="python: one assert per test whose expected side is a literal, e.g. "
                    "'assert add(2, 3) == 5' (forms: services/common/code_tests.py); the program "
                    "only evaluates the expression, the verifier compares")


class VerifyItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    response: str = Field(max_length=200_000)
    gold: str = Field("", max_length=2_000)
    task: Task = "math"
    options: VerifyOptions = Field(default_factory=VerifyOptions)

    @model_validator(mode="after")
    def _task_inputs(self) -> "VerifyItem":
        if self.task in ("math", "multiple_choice") and not self.gold.strip():
            raise ValueError(f"task {self.task!r} needs a non-empty 'gold' answer")
        if self.task == "python" and not self.options.tests:
            raise ValueError("task 'python' needs options.tests")
        if self.task == "python":  # judged outside the program: only forms with a literal side
            for i, test in enumerate(self.options.tests):
                if len(test) > 10_000:
                    raise ValueError(f"options.tests[{i}]: over 10000 characters")
                try:
                    parse_test(test)
                except BadTestForm as exc:
                    raise ValueError(f"options.tests[{i}]: {exc}") from None
        return self


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[VerifyItem] = Field(min_length=1)


class VerifyResult(BaseModel):
    correct: bool
    reward: float
    extracted: str | None
    status: Literal["ok", "timeout", "error"]
    components: dict[str, float]
    latency_ms: float
    detail: str | None = None


class VerifyResponse(BaseModel):
    results: list[VerifyResult]
