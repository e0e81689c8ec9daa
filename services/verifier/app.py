"""The verifier's public REST API: ``POST /v1/verify`` for outside callers (DESIGN.md §6)."""

from __future__ import annotations

import secrets

import msgspec
from fastapi import Depends, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import Counter, Gauge, Histogram

from services.common.config import VerifierConfig
from services.common.http import service_app
from services.common.verify_api import VerifyRequest, VerifyResponse, VerifyResult
from services.verifier.scoring import Scorer

ITEMS = Counter("t1_verifier_items_total", "verdicts given", ["source", "status"])
LATENCY = Histogram("t1_verifier_item_seconds", "time to score one item", ["source"])
INFLIGHT = Gauge("t1_verifier_inflight_requests", "REST requests being served")
SHED = Counter("t1_verifier_shed_requests_total", "REST requests refused with 503 (overload)")


class BodyLimit:
    """413 for a request body over ``max_bytes``, declared (Content-Length) or not (chunked: read
    up to the limit and no further, then handed on as one piece)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, 413)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                return await too_large(scope, receive, send)
            return await self.app(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await too_large(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)


def create_app(cfg: VerifierConfig, scorer: Scorer, health_extra=lambda: {}):
    app = service_app("verifier", lambda: {"ready": True, **health_extra()},
                      title="t1 verifier: math answer grading")
    bearer = HTTPBearer(auto_error=False)
    inflight = [0]  # requests admitted; touched only on the event loop thread

    def check_token(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if cfg.auth_token is None:
            return
        if creds is None or not secrets.compare_digest(creds.credentials, cfg.auth_token):
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)

    def score_all(req: VerifyRequest) -> list[VerifyResult]:
        verdicts = scorer.score_batch([(i.response, i.gold, i.task, i.options) for i in req.items])
        for v in verdicts:
            ITEMS.labels("rest", v.status).inc()
            LATENCY.labels("rest").observe(v.latency_ms / 1000)
        return [VerifyResult(**msgspec.structs.asdict(v)) for v in verdicts]

    @app.post("/v1/verify", response_model=VerifyResponse, dependencies=[Depends(check_token)],
              responses={413: {"description": "body or batch too large"},
                         503: {"description": "overloaded; retry after the Retry-After seconds"}})
    async def verify(req: VerifyRequest) -> VerifyResponse:
        """Score a batch of responses against gold answers; results come in input order."""
        if len(req.items) > cfg.max_batch:
            raise HTTPException(413, f"batch of {len(req.items)} items exceeds max_batch={cfg.max_batch}")
        if inflight[0] >= cfg.max_inflight_requests:
            SHED.inc()
            raise HTTPException(503, "verifier overloaded", headers={"Retry-After": "1"})
        inflight[0] += 1
        INFLIGHT.set(inflight[0])
        try:
            return VerifyResponse(results=await run_in_threadpool(score_all, req))
        finally:
            inflight[0] -= 1
            INFLIGHT.set(inflight[0])

    return app
