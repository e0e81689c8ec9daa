"""HTTP plumbing shared by all services: /health, Prometheus /metrics, a server thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import make_asgi_app

log = logging.getLogger(__name__)


def await_listening(server: uvicorn.Server, alive: Callable[[], bool], timeout_s: float) -> None:
    """Until ``server`` listens (then say where), or a one-line exit: its port is taken or it
    died starting. ``alive`` tells whether the thread or task serving it still runs."""
    cfg = server.config
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not alive() or time.monotonic() > deadline:
            raise SystemExit(f"HTTP server could not listen on {cfg.host}:{cfg.port} "
                             "(port in use, or the address is not this host's)")
        time.sleep(0.02)
    log.info("listening on http://%s:%d", cfg.host, cfg.port)


def wait_healthy(url: str, timeout_s: float = 60.0, proc=None) -> bool:
    """Poll ``{url}/health`` until it answers 200; False on timeout or if ``proc`` exits."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def service_app(name: str, health: Callable[[], dict], title: str | None = None) -> FastAPI:
    """A FastAPI app with ``GET /health`` (503 until ready) and ``GET /metrics``."""
    app = FastAPI(title=title or f"t1 {name}")
    started = time.time()

    @app.get("/health")
    def _health():
        state = {"service": name, "uptime_s": round(time.time() - started, 1), **health()}
        return JSONResponse(state, status_code=200 if state.get("ready", True) else 503)

    metrics = make_asgi_app()

    @app.get("/metrics", include_in_schema=False)
    async def _metrics(request: Request):
        # prometheus_client's own ASGI app (content negotiation, gzip), served at /metrics
        # itself: a mount would answer /metrics with a redirect to /metrics/
        return _AsgiResponse(metrics)

    return app


class _AsgiResponse(Response):
    """Hands a request to an ASGI app as a FastAPI endpoint's response."""

    def __init__(self, asgi) -> None:  # no body of its own: the app writes the response
        self.asgi = asgi
        self.background = None

    async def __call__(self, scope, receive, send) -> None:
        await self.asgi(scope, receive, send)


class ServerThread:
    """Run uvicorn in a daemon thread so the main thread owns the engine loop (uvicorn leaves
    signal handling to the main thread when it runs in another one)."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, name=f"http:{port}", daemon=True)

    def start(self, timeout_s: float = 10.0) -> "ServerThread":
        self.thread.start()
        await_listening(self.server, self.thread.is_alive, timeout_s)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
