"""The generator's HTTP port: /health, /metrics, and vLLM's OpenAI-compatible API.

Everything runs on the engine's event loop: vLLM's serving classes await the same ``AsyncLLM``
the rollout worker feeds, so an outside caller's completion is batched with the rollouts.
``/v1/completions``, ``/v1/chat/completions`` (the model's chat template) and ``/v1/models``
are vLLM's own routers over app state built by vLLM's ``init_app_state`` around our engine
client; they are mounted once the engine is up (until then ``/health`` answers 503 and those
routes 404).
"""

from __future__ import annotations

import asyncio

import uvicorn
from fastapi import FastAPI

from services.common.http import await_listening
from services.generator.engine import EventLoopThread, RolloutEngine


def add_openai_error_handlers(app: FastAPI) -> None:
    """vLLM's exception handlers (bad request -> 400 with an OpenAI error body); they must be
    registered before the app serves its first request."""
    from vllm.entrypoints.serve.exception_handling.register import init_exception_handler

    init_exception_handler(app)


async def mount_openai(app: FastAPI, engine: RolloutEngine, model_name: str | None = None) -> None:
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.entrypoints.openai.chat_completion.api_router import attach_router as chat
    from vllm.entrypoints.openai.completion.api_router import attach_router as completions
    from vllm.entrypoints.openai.models.api_router import attach_router as models
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    argv = ["--model", engine.model_path, "--served-model-name", model_name or engine.model_path]
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    tasks = await engine.llm.get_supported_tasks()
    await init_app_state(engine.llm, app.state, args, tasks)
    completions(app)
    chat(app)
    models(app)


class LoopServer:
    """uvicorn serving ``app`` as a task on the engine's loop (not a thread of its own, unlike
    ``services.common.http.ServerThread``: vLLM's handlers must run where the engine runs)."""

    def __init__(self, app: FastAPI, host: str, port: int, loop: EventLoopThread) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    lifespan="off"))
        self.loop = loop
        self.future = None

    def start(self, timeout_s: float = 10.0) -> "LoopServer":
        self.future = self.loop.submit(self.server.serve())
        await_listening(self.server, lambda: not self.future.done(), timeout_s)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.future is not None:
            try:
                self.future.result(timeout=5)
            except (asyncio.TimeoutError, TimeoutError, asyncio.CancelledError):
                pass
