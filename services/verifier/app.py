"""The verifier's public REST API: ``POST /v1/verify`` for outside callers (DESIGN.md §6)."""

from __future__ import annotations

import secrets
from typing import Literal

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field

from services.common.config import VerifierConfig
from services.common.http import service_app
from services.verifier.scoring import Scorer

ITEMS = Counter("t1_verifier_items_total", "verdicts given", ["source", "status"])
LATENCY = Histogram("t1_verifier_item_seconds", "time to score one item", ["source"])


class VerifyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    finish_reason: Literal["stop", "length"] = "stop"


class VerifyItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    response: str = Field(max_length=200_000)
    gold: str = Field(min_length=1, max_length=2_000)
    task: Literal["math"] = "math"
    options: VerifyOptions = Field(default_factory=VerifyOptions)


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


class VerifyResponse(BaseModel):
    results: list[VerifyResult]


def create_app(cfg: VerifierConfig, scorer: Scorer, health_extra=lambda: {}):
    app = service_app("verifier", lambda: {"ready": True, **health_extra()},
                      title="t1 verifier: math answer grading")
    bearer = HTTPBearer(auto_error=False)

    def check_token(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if cfg.auth_token is None:
            return
        if creds is None or not secrets.compare_digest(creds.credentials, cfg.auth_token):
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > cfg.max_body_bytes):
            return JSONResponse({"detail": f"request body over {cfg.max_body_bytes} bytes"}, 413)
        return await call_next(request)

    @app.post("/v1/verify", response_model=VerifyResponse, dependencies=[Depends(check_token)])
    def verify(req: VerifyRequest) -> VerifyResponse:
        if len(req.items) > cfg.max_batch:
            raise HTTPException(413, f"batch of {len(req.items)} items exceeds max_batch={cfg.max_batch}")
        results = []
        for item in req.items:
            with LATENCY.labels("rest").time():
                v = scorer.score(item.response, item.gold, item.options.finish_reason)
            ITEMS.labels("rest", v.status).inc()
            results.append(VerifyResult(correct=v.correct, reward=v.reward, extracted=v.extracted,
                                        status=v.status, components=v.components,
                                        latency_ms=v.latency_ms))
        return VerifyResponse(results=results)

    return app
