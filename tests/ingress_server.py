"""Run the ingress app under a real uvicorn in a background thread (tests and benchmarks)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from fixfleet.config import Settings
from fixfleet.ports import free_port
from serve_app.app import create_app




@contextmanager
def running_ingress(settings: Settings, *, singletons: bool = True) -> Iterator[str]:
    """`singletons=False`: the app as a Serve ingress replica runs it (serve_app/deployment.py)."""
    port = free_port()
    config = uvicorn.Config(create_app(settings, singletons=singletons), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the ingress did not start")
        time.sleep(0.05)
    try:
        httpx.get(f"{url}/health", timeout=5)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
