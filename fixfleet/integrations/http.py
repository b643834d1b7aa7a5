"""One retrying HTTP call for every integration: backoff on 429 and 5xx, honouring Retry-After."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from fixfleet.logs import log_once

log = logging.getLogger(__name__)
RETRIED = {429, 500, 502, 503, 504}


class IntegrationError(Exception):
    """An API answered with an error (or not at all); `status` is None for transport errors."""

    def __init__(self, service: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{service}: {message}")
        self.service, self.status = service, status


async def request(
    client: httpx.AsyncClient,
    service: str,
    method: str,
    url: str,
    *,
    attempts: int = 4,
    backoff_s: float = 0.5,
    max_wait_s: float = 30.0,
    **kwargs: Any,
) -> httpx.Response:
    """Send the request; retry transient failures; raise IntegrationError for the rest."""
    for attempt in range(1, attempts + 1):
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            if attempt == attempts:
                raise IntegrationError(service, f"{method} {url} failed: {exc}") from exc
            await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
            continue
        if response.status_code not in RETRIED or attempt == attempts:
            break
        wait = _retry_after(response) or backoff_s * 2 ** (attempt - 1)
        # Once per service and status: a service that is down would say it at every retry of every call.
        log_once(log, (service, "retry", str(response.status_code)), "%s answered %s; retrying in %.1fs", service,
                 response.status_code, wait)
        await asyncio.sleep(min(wait, max_wait_s))
    if response.is_error:
        raise IntegrationError(service, f"{method} {url} -> {response.status_code}: {response.text[:300]}", response.status_code)
    return response


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
