"""A typed Python client for the verifier's REST API (sync and async).

Splits large inputs into batches of at most ``max_batch`` items, retries 429/503 and connection
errors with exponential backoff (honouring ``Retry-After``), and raises ``VerifierError`` with
the server's message for any other 4xx.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable, Sequence

import httpx

from services.common.verify_api import VerifyItem, VerifyRequest, VerifyResponse, VerifyResult

RETRY_STATUS = {429, 502, 503, 504}


class VerifierError(RuntimeError):
    def __init__(self, status_code: int, detail: object) -> None:
        super().__init__(f"verifier answered {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


def _as_items(items: Iterable[VerifyItem | dict]) -> list[VerifyItem]:
    return [x if isinstance(x, VerifyItem) else VerifyItem.model_validate(x) for x in items]


def _batches(items: Sequence[VerifyItem], size: int) -> list[list[VerifyItem]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _delay(attempt: int, response: httpx.Response | None, base: float, cap: float) -> float:
    if response is not None and (after := response.headers.get("retry-after", "")).isdigit():
        return min(float(after), cap)
    return min(cap, base * 2**attempt) * (0.5 + random.random() / 2)  # jittered exponential


def _detail(response: httpx.Response) -> object:
    try:
        return response.json().get("detail")
    except ValueError:
        return response.text[:200]


class _Base:
    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 60.0,
                 max_batch: int = 256, retries: int = 5, backoff_s: float = 0.2,
                 max_backoff_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s
        self.max_batch = max_batch
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s

    def _body(self, batch: list[VerifyItem]) -> dict:
        return VerifyRequest(items=batch).model_dump(mode="json")

    def _outcome(self, attempt: int, response: httpx.Response | None,
                  error: httpx.TransportError | None) -> tuple[list[VerifyResult] | None, float]:
        """(results, 0) on success, (None, seconds to wait) to retry; raises when done trying."""
        if response is not None:
            if response.status_code == 200:
                return VerifyResponse.model_validate(response.json()).results, 0.0
            if response.status_code not in RETRY_STATUS:
                raise VerifierError(response.status_code, _detail(response))
        if attempt >= self.retries:
            if error is not None:
                raise error
            raise VerifierError(response.status_code, "retries exhausted")
        return None, _delay(attempt, response, self.backoff_s, self.max_backoff_s)


class VerifierClient(_Base):
    def __init__(self, base_url: str, **kw) -> None:
        super().__init__(base_url, **kw)
        self.http = httpx.Client(timeout=self.timeout_s, headers=self.headers)

    def verify(self, items: Iterable[VerifyItem | dict]) -> list[VerifyResult]:
        out: list[VerifyResult] = []
        for batch in _batches(_as_items(items), self.max_batch):
            out.extend(self._post(batch))
        return out

    def _post(self, batch: list[VerifyItem]) -> list[VerifyResult]:
        body = self._body(batch)
        for attempt in range(self.retries + 1):
            response = error = None
            try:
                response = self.http.post(f"{self.base_url}/v1/verify", json=body)
            except httpx.TransportError as exc:
                error = exc
            results, wait = self._outcome(attempt, response, error)
            if results is not None:
                return results
            time.sleep(wait)
        raise AssertionError("unreachable: _outcome raises on the last attempt")

    def health(self) -> dict:
        return self.http.get(f"{self.base_url}/health").json()

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "VerifierClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncVerifierClient(_Base):
    def __init__(self, base_url: str, concurrency: int = 4, **kw) -> None:
        super().__init__(base_url, **kw)
        self.http = httpx.AsyncClient(timeout=self.timeout_s, headers=self.headers)
        self.concurrency = concurrency

    async def verify(self, items: Iterable[VerifyItem | dict]) -> list[VerifyResult]:
        """Batches go out concurrently (at most ``concurrency`` at once); order is kept."""
        gate = asyncio.Semaphore(self.concurrency)

        async def one(batch):
            async with gate:
                return await self._post(batch)

        parts = await asyncio.gather(*(one(b) for b in _batches(_as_items(items), self.max_batch)))
        return [r for part in parts for r in part]

    async def _post(self, batch: list[VerifyItem]) -> list[VerifyResult]:
        body = self._body(batch)
        for attempt in range(self.retries + 1):
            response = error = None
            try:
                response = await self.http.post(f"{self.base_url}/v1/verify", json=body)
            except httpx.TransportError as exc:
                error = exc
            results, wait = self._outcome(attempt, response, error)
            if results is not None:
                return results
            await asyncio.sleep(wait)
        raise AssertionError("unreachable: _outcome raises on the last attempt")

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "AsyncVerifierClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
