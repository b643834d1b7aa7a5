"""The whole platform on a real Ray Serve: cluster/serve_config.yaml deployed the way `serve run`
does it, on a node that offers one planning and one executor slot, with the dashboard.

The replicas get their settings only through the config's runtime_env (env vars), pointed at a
throwaway Postgres database and a Redis database of their own. Ray runs on a private local node
(random GCS port, not Redis's 6379) and everything it started is gone at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest
import yaml
from redis import Redis

from fixfleet.ports import free_port
from fixfleet.scratch import create_database, drop_database, redis_db_url
from fixfleet.intake.signatures import sentry_headers
from fixfleet.platform import APP_IMPORT_PATH, CONFIG_PATH, DEPLOYMENT_NAME, LocalServe, load_config, running_config
from serve_app import deployment
from serve_app.deployment import build_app
from tests.corpus import CORPUS

ALERT = CORPUS / "sentry-webhooks" / "event_alert.triggered.json"
SERVE_REDIS_DB = 12  # not the suite's 13: the replica's outbox relay writes here
REPO = f"https://github.com/fixfleet-tests/front-end-{uuid.uuid4().hex[:6]}"  # only the replica's env knows it
CONSOLE_TOKEN = "console-token-0123456789"
SECRET = "serve-test-secret"


def test_serve_config_is_a_valid_serve_deploy_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(CONFIG_PATH.read_text())
    config = ServeDeploySchema.model_validate(raw)  # what `serve deploy` and a RayService's serveConfigV2 accept
    (app,) = config.applications
    assert app.import_path == APP_IMPORT_PATH == "serve_app.deployment:build_app"  # the launcher deploys the same
    assert app.route_prefix == "/"
    assert [d.name for d in app.deployments] == [DEPLOYMENT_NAME] == [deployment.DEPLOYMENT_NAME]
    assert config.http_options.port == 8000 and config.logging_config.enable_access_log is False
    # Secrets and URLs come from the pod (a Kubernetes secret), never from this file.
    assert not (app.runtime_env or {}).get("env_vars")  # it would override the operator's pod variables
    # The import path resolves to Serve's application builder.
    from ray.serve import Application

    assert isinstance(build_app(app.args), Application)


def event_alert() -> bytes:
    payload = json.loads(ALERT.read_text())
    payload["data"]["event"]["issue_id"] = str(int(time.time() * 1000))  # a Sentry issue no earlier run has
    return json.dumps(payload).encode()


def headers(body: bytes, request_id: str) -> dict[str, str]:
    return sentry_headers(SECRET, body, request_id)


@pytest.fixture(scope="module")
def serve_database(postgres_server_url: str) -> Iterator[str]:
    url = asyncio.run(create_database(postgres_server_url))
    yield url
    asyncio.run(drop_database(postgres_server_url, url))


@pytest.fixture(scope="module")
def serve_redis(redis_server_url: str) -> Iterator[str]:
    url = redis_db_url(redis_server_url, SERVE_REDIS_DB)
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
            "FIXFLEET_API_TOKENS": json.dumps([{"name": "lead", "token": CONSOLE_TOKEN, "scopes": ["read", "submit", "approve"]}]),
        },
        args={"planners_min": 1, "planners_max": 1, "executors_min": 1, "executors_max": 1},
    )
    with running_config(config, resources={"planning_slot": 1, "executor_slot": 1}, dashboard=True) as local:
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


@pytest.mark.e2e
def test_signed_sentry_alert_through_serve(served: LocalServe, serve_database: str, serve_redis: str) -> None:
    body, request_id = event_alert(), f"serve-test-{uuid.uuid4()}"
    with httpx.Client(base_url=served.url, timeout=30) as client:
        health = client.get("/health")
        assert health.status_code == 200, health.text
        assert {k: v["status"] for k, v in health.json()["checks"].items() if k in ("postgres", "redis")} == {
            "postgres": "ok", "redis": "ok"}

        first = client.post("/webhooks/sentry", content=body, headers=headers(body, request_id))
        assert first.status_code == 202, first.text
        # Serve's request path answers with its request id; a webhook went straight to the replica's app.
        assert "x-request-id" in health.headers and "x-request-id" not in first.headers
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
    assert (task["source"], task["repo"]) == ("sentry", REPO)

    # The relay put it on the planning stream (Redis db of this test) and a planner replica claimed it.
    planned_by = asyncio.run(claimed_by(serve_database, task["id"], "PLANNING", timeout_s=60))
    assert planned_by.startswith("planner-"), planned_by


# A second platform, ingress only, in a process of its own: its own Ray node, HAProxy and port.
SECOND_PLATFORM = """
import json, sys, httpx
from fixfleet.platform import load_config, running_config
config = load_config(http_host="127.0.0.1", http_port=int(sys.argv[1]), env_vars=json.loads(sys.argv[2]),
                     args={"planners_max": 0, "executors_max": 0})
with running_config(config) as local:
    print("health", httpx.get(local.url + "/health", timeout=30).status_code, flush=True)
"""


@pytest.mark.e2e
def test_a_second_platform_on_the_machine_starts_beside_the_first(served: LocalServe, serve_database: str,
                                                                  serve_redis: str, tmp_path: Path) -> None:
    """HAProxy's stats and metrics listeners once took Ray's fixed ports (8404, 9101) on every
    interface: with one platform up, the next one's HAProxy died at start ("HAProxy crashed
    during startup"). Both answer now, each on its own port."""
    env_vars = {"DATABASE_URL": serve_database, "REDIS_URL": serve_redis, "FIXFLEET_HOME": str(tmp_path / "home"),
                "FIXFLEET_SENTRY_CLIENT_SECRET": SECRET}
    second = subprocess.run([sys.executable, "-c", SECOND_PLATFORM, str(free_port()), json.dumps(env_vars)],
                            capture_output=True, text=True, timeout=300)
    assert "health 200" in second.stdout, second.stderr[-3000:]
    assert httpx.get(f"{served.url}/health", timeout=30).status_code == 200  # the first one still serves


@pytest.mark.e2e
def test_the_console_is_served_by_the_same_application(served: LocalServe) -> None:
    """/ui/ through Serve's ingress: its static files, its headers, a sign-in and a page."""
    with httpx.Client(base_url=served.url, timeout=30, follow_redirects=False) as client:
        assert client.get("/ui/").headers["location"].startswith("/ui/login")
        form = client.get("/ui/login")
        assert form.status_code == 200 and "script-src 'self'" in form.headers["content-security-policy"]
        assert client.get("/ui/static/htmx.min.js").status_code == 200
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)[1]
        signed = client.post("/ui/login", data={"token": CONSOLE_TOKEN, "csrf": csrf})
        assert signed.status_code == 303, signed.text
        pool = client.get("/ui/pool")
        assert pool.status_code == 200 and "Signed in as <strong>lead</strong>" in pool.text
        assert "planner-" in pool.text and "executor-" in pool.text  # the application's own agents


async def claimed_by(database: str, task_id: int, status: str, *, timeout_s: float) -> str:
    """The actor of the task's first move to `status` (waits for it)."""
    conn = await asyncpg.connect(database)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            actor = await conn.fetchval("SELECT actor FROM task_events WHERE task_id = $1 AND to_status = $2 "
                                        "ORDER BY id LIMIT 1", task_id, status)
            if actor:
                return actor
            await asyncio.sleep(0.2)
        raise AssertionError(f"no move to {status} within {timeout_s:.0f}s")
    finally:
        await conn.close()


@pytest.mark.e2e
def test_one_application_runs_the_agents_the_dashboard_lists_them(served: LocalServe) -> None:
    from ray import serve
    from ray.util.state import list_actors

    (app,) = serve.status().applications.values()
    assert {name: str(d.status.value) for name, d in app.deployments.items()} == {
        "ingress": "HEALTHY", "planner": "HEALTHY", "executor": "HEALTHY", "relay": "HEALTHY"}
    assert served.dashboard_url and httpx.get(served.dashboard_url, timeout=10).status_code == 200
    # The State API of this node, by its dashboard's address: never looked up (another Ray on the machine).
    actors = list_actors(address=served.dashboard_url, limit=1000)
    replicas = {a.class_name: a.state for a in actors if a.class_name.startswith("ServeReplica:")}
    for name in ("ingress", "planner", "executor", "relay"):
        assert replicas.get(f"ServeReplica:fixfleet:{name}") == "ALIVE", replicas
    with httpx.Client(base_url=served.url, timeout=10) as client:
        agents = client.get("/health").json()["checks"]["agents"]
    assert agents == {"status": "ok", "detail": "2 of 2 agents alive"}


@pytest.mark.e2e
def test_agents_and_the_policy_export_ray_metrics(served: LocalServe, serve_database: str) -> None:
    """Ray's metrics agent exports what the agents and the autoscaling policy record (ray_ prefix)."""
    import ray

    port = ray._private.worker._global_node.metrics_export_port
    wanted = ('ray_ai_agent_tasks_started_total', 'agent="planner"'), ('ray_ai_agent_pool_target_replicas',
                                                                       'queue_name="execution"')
    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        lines = text.splitlines()
        if all(any(line.startswith(name) and label in line for line in lines) for name, label in wanted):
            break
        time.sleep(2)
    for name, label in wanted:
        assert any(line.startswith(name) and label in line for line in text.splitlines()), (name, text[-3000:])


@pytest.mark.e2e
def test_replicas_log_json_lines_naming_component_agent_and_task(served: LocalServe) -> None:
    import ray

    logs_dir = Path(ray._private.worker._global_node.get_logs_dir_path())
    lines = []
    for path in logs_dir.glob("worker-*.err"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(line))
    components = {line.get("component") for line in lines}
    assert {"planner", "relay"} <= components, components
    planner = [line for line in lines if line.get("component") == "planner" and line.get("task")]
    assert planner and all(line["agent"].startswith("planner-") for line in planner), planner[:3]
    assert any(line["repo"] == REPO and line["task"].startswith("FF-") for line in planner), planner[:5]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
