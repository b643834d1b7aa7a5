"""The ingress on a real Ray Serve: cluster/serve_config.yaml deployed the way `serve run` does it.

The replica gets its settings only through the config's runtime_env (env vars), pointed at a
throwaway Postgres database and a Redis database of its own. Ray runs on a private local node
(random GCS port, not Redis's 6379) and everything it started is gone at the end.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import psutil
import pytest
import yaml
from redis import Redis

from fixfleet.scratch import create_database, drop_database
from serve_app.deployment import CONFIG_PATH, DEPLOYMENT_NAME, LocalServe, build_app, load_config, running_config
from serve_app.signatures import sign_sentry
from tests.ingress_server import free_port

CORPUS = Path("/work/shared/corpus/sentry-webhooks/event_alert.triggered.json")
if not CORPUS.exists():  # CI: shared/ beside the clone
    CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "sentry-webhooks" / "event_alert.triggered.json"
SERVE_REDIS_DB = 12  # not the suite's 13: the replica's outbox relay writes here
REPO = f"https://github.com/fixfleet-tests/front-end-{uuid.uuid4().hex[:6]}"  # only the replica's env knows it
SECRET = "serve-test-secret"


def test_serve_config_is_a_valid_serve_deploy_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(CONFIG_PATH.read_text())
    config = ServeDeploySchema.model_validate(raw)  # what `serve deploy` and a RayService's serveConfigV2 accept
    (app,) = config.applications
    assert app.import_path == "serve_app.deployment:build_app"
    assert app.route_prefix == "/"
    assert [d.name for d in app.deployments] == [DEPLOYMENT_NAME]
    assert config.http_options.port == 8000 and config.logging_config.enable_access_log is False
    # Secrets and URLs come from the pod (a Kubernetes secret), never from this file.
    assert not (app.runtime_env or {}).get("env_vars")  # it would override the operator's pod variables
    # The import path resolves to Serve's application builder.
    from ray.serve import Application

    assert isinstance(build_app(app.args), Application)


def event_alert() -> bytes:
    payload = json.loads(CORPUS.read_text())
    payload["data"]["event"]["issue_id"] = str(int(time.time() * 1000))  # a Sentry issue no earlier run has
    return json.dumps(payload).encode()


def headers(body: bytes, request_id: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Sentry-Hook-Resource": "event_alert",
        "Sentry-Hook-Signature": sign_sentry(SECRET, body),
        "Request-ID": request_id,
    }


@pytest.fixture(scope="module")
def serve_database(postgres_server_url: str) -> Iterator[str]:
    url = asyncio.run(create_database(postgres_server_url))
    yield url
    asyncio.run(drop_database(postgres_server_url, url))


@pytest.fixture(scope="module")
def serve_redis(redis_server_url: str) -> Iterator[str]:
    parts = urlsplit(redis_server_url)
    if parts.scheme == "unix":
        url = f"{redis_server_url.split('?')[0]}?db={SERVE_REDIS_DB}"
    else:
        url = urlunsplit(parts._replace(path=f"/{SERVE_REDIS_DB}"))
    client = Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def served(serve_database: str, serve_redis: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServe]:
    config = load_config(
        CONFIG_PATH,
        http_host="127.0.0.1",
        http_port=free_port(),
        env_vars={
            "DATABASE_URL": serve_database,
            "REDIS_URL": serve_redis,
            "FIXFLEET_SENTRY_CLIENT_SECRET": SECRET,
            "FIXFLEET_SENTRY_PROJECT_REPOS": json.dumps({"front-end": REPO}),
            "FIXFLEET_REPO_ALLOWLIST": '["https://github.com/fixfleet-tests/*"]',
            "FIXFLEET_HOME": str(tmp_path_factory.mktemp("serve-home")),
        },
    )
    with running_config(config) as local:
        yield local
    time.sleep(0.5)
    left = []
    for pid in local.pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.NoSuchProcess:
            pass
    assert not left, f"processes of the Ray node still alive after shutdown: {left}"


@pytest.mark.slow
def test_signed_sentry_alert_through_serve(served: LocalServe, serve_database: str, serve_redis: str) -> None:
    started = time.monotonic()
    body, request_id = event_alert(), f"serve-test-{uuid.uuid4()}"
    with httpx.Client(base_url=served.url, timeout=30) as client:
        health = client.get("/health")
        assert health.status_code == 200, health.text
        assert {k: v["status"] for k, v in health.json()["checks"].items() if k in ("postgres", "redis")} == {
            "postgres": "ok", "redis": "ok"}

        first = client.post("/webhooks/sentry", content=body, headers=headers(body, request_id))
        assert first.status_code == 202, first.text
        assert first.json()["status"] == "created"
        key = first.json()["task"]
        assert key.startswith("FF-")

        again = client.post("/webhooks/sentry", content=body, headers=headers(body, request_id))
        assert again.status_code == 200, again.text
        assert again.json() == {**again.json(), "status": "duplicate", "task": key}

        forged = client.post("/webhooks/sentry", content=body, headers=headers(body, "x") | {"Sentry-Hook-Signature": "0" * 64})
        assert forged.status_code == 401

    async def stored() -> tuple[asyncpg.Record | None, int]:
        conn = await asyncpg.connect(serve_database)
        try:
            task = await conn.fetchrow("SELECT id, source, repo, status FROM tasks WHERE key = $1", key)
            deliveries = await conn.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE source = 'sentry' AND delivery_id = $1", request_id)
            return task, deliveries
        finally:
            await conn.close()

    task, deliveries = asyncio.run(stored())
    assert task is not None and deliveries == 1
    assert (task["source"], task["repo"], task["status"]) == ("sentry", REPO, "RECEIVED")

    # The replica's outbox relay put it on the planning stream (Redis db of this test).
    redis = Redis.from_url(serve_redis)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            jobs = [json.loads(fields[b"job"]) for name in redis.scan_iter("fixfleet:planning:*")
                    if redis.type(name) == b"stream" for _, fields in redis.xrange(name)]
            if any(job["task_id"] == task["id"] for job in jobs):
                break
            time.sleep(0.1)
        assert [job["task_id"] for job in jobs] == [task["id"]]
    finally:
        redis.close()
    assert time.monotonic() - started < 30
