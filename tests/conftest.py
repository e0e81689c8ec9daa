"""Shared fixtures: one real Redis server and one tiny model per test session."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from services.common import streams
from services.common.config import ModelConfig, load_config
from services.common.embedded_redis import EmbeddedRedis
from services.common.net import free_port


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def s(redis_server) -> streams.Streams:
    """Streams on the shared server under a fresh key prefix: tests never see each other's keys."""
    return streams.Streams(streams.connect(redis_server.url), prefix=f"test-{uuid.uuid4().hex[:8]}")


TINY = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                   intermediate_size=128, max_position=256)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from services.trainer.tiny_model import build_tiny_model

    return build_tiny_model(TINY, tmp_path_factory.mktemp("model") / "base")


@pytest.fixture(scope="session")
def tied_model_dir(tmp_path_factory) -> Path:
    """Same shape with tied input/output embeddings, as in Qwen2.5 0.5B-3B."""
    from services.trainer.tiny_model import build_tiny_model

    tied = TINY.model_copy(update={"tie_word_embeddings": True})
    return build_tiny_model(tied, tmp_path_factory.mktemp("model") / "tied")


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model with a ChatML chat template in its tokenizer, as Qwen2.5's has."""
    import shutil

    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(tiny_model_dir, out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = CHATML
    tok.save_pretrained(out)
    return out


@pytest.fixture
def make_config(tmp_path, tiny_model_dir):
    """The quick preset pointed at a temp run dir, the shared tiny model and free ports."""
    def make(*overrides: str, redis_url: str | None = None):
        base = [f"run_dir={tmp_path / 'run'}", f"model.path={tiny_model_dir}",
                f"generator.port={free_port()}", f"verifier.port={free_port()}",
                f"trainer.port={free_port()}"]
        if redis_url:
            base.append(f"redis.url={redis_url}")
        return load_config("quick", base + list(overrides), environ={})
    return make


@pytest.fixture(scope="module")
def start_verifier(tmp_path_factory):
    """Start `t1 verifier` as its own process (REST only) -> (process, base url); stopped after."""
    procs = []

    def start(*sets: str, env: dict[str, str] | None = None):
        from services.common.http import wait_healthy

        port = free_port()
        log = open(tmp_path_factory.mktemp("verifier") / "verifier.log", "wb")
        args = [sys.executable, "-m", "services.cli", "verifier", "--port", str(port), "--config", "quick"]
        for item in sets:
            args += ["--set", item]
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        if not wait_healthy(url, proc=proc):
            pytest.fail("verifier did not become healthy")
        return proc, url

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)
