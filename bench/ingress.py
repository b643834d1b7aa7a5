"""Ingress benchmark: signed Sentry webhooks through Ray Serve and through plain uvicorn.

`python -m bench.ingress [--seconds 20] [--concurrency 32] [--target both|serve|uvicorn]
                         [--ingress haproxy|proxy] [--replicas N] [--serve-env RAY_SERVE_X=1 ...]`

Every request is a signed Sentry `event_alert` with its own `Request-ID` and its own Sentry
issue id, so each one makes a task: verify, parse, one Postgres transaction (delivery + task +
audit + outbox rows), 202; the outbox relay in the app's lifespan publishes it to the Redis
stream. The same app runs (a) as the Serve deployment of cluster/serve_config.yaml, deployed the
way `serve run cluster/serve_config.yaml` does it on a private local Ray node with the node
environment of `fixfleet.platform.SERVE_NODE_ENV`, and (b) under plain uvicorn in a
subprocess, with as many worker processes as Serve runs ingress replicas and at the niceness Ray
gives its workers (so the replicas'): the same number of event loops, the same share of a busy
machine. Both are up side by side (own database, own Redis db each); the load alternates
between them in slices (A B B A ...) so that the background load of a shared machine touches
both alike. The load generator is a process of its own (aiohttp on uvloop, `--concurrency`
keep-alive connections).

Then, with the apps still running so their relays drain the outbox, every accepted delivery
(202) is looked up: `lost` counts accepted deliveries without their delivery + task rows in
Postgres or without their entry in the planning stream; `duplicated` counts a delivery accepted
twice, extra task rows for one Sentry issue, and extra stream entries for one task.

DATABASE_URL / REDIS_URL name the servers (else the embedded ones); the databases are dropped
and Redis dbs 10 and 11 flushed at the end. Ray never takes port 6379 and is shut down, with every
process it started. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

from fixfleet.intake.signatures import sentry_headers
from fixfleet.ports import free_port
from tests.corpus import CORPUS

ROOT = Path(__file__).resolve().parents[1]
ALERT = CORPUS / "sentry-webhooks" / "event_alert.triggered.json"
CONFIG = ROOT / "cluster" / "serve_config.yaml"
REPO = "https://github.com/example/front-end"




def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


# --- the load generator (runs in its own process) ------------------------------------------


def body_template() -> bytes:
    """The corpus event_alert with placeholders where each request puts its own issue id."""
    payload = json.loads(ALERT.read_text())
    event = payload["data"]["event"]
    event["issue_id"] = "__ISSUE__"
    event["issue_url"] = "https://sentry.io/api/0/issues/__ISSUE__/"
    return json.dumps(payload, separators=(",", ":")).encode()


async def run_phase(url: str, secret: str, template: bytes, warmup: float, seconds: float, concurrency: int,
                    tag: str, result: dict[str, Any]) -> None:
    """`concurrency` keep-alive connections posting back to back: `warmup` s unmeasured, then `seconds`."""
    import aiohttp

    measured_before = len(result["latencies"])
    t0 = time.perf_counter()
    measure_from, stop_at = t0 + warmup, t0 + warmup + seconds
    issue_base = int(time.time() * 1000) * 1000

    async def worker(w: int, session: aiohttp.ClientSession) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            n += 1
            request_id = f"bench-{tag}-{w}-{n}"
            body = template.replace(b"__ISSUE__", str(issue_base + w * 10_000_000 + n).encode())
            headers = sentry_headers(secret, body, request_id)
            start = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    payload = await response.read()
                    status = response.status
            except Exception as exc:  # a refused or reset connection is a result, not a crash
                result["failures"][type(exc).__name__] += 1
                await asyncio.sleep(0.01)
                continue
            end = time.perf_counter()
            result["statuses"][status] += 1
            if status == 202:
                result["accepted"].append((request_id, json.loads(payload)["task"]))
            if measure_from <= end <= stop_at:  # completed inside the measured window
                result["latencies"].append((end - start) * 1000)

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(worker(w, session) for w in range(concurrency)))
    result["seconds"] += seconds
    result["slices"].append(round((len(result["latencies"]) - measured_before) / seconds, 1))


async def generate(plan_path: Path, out: Path) -> None:
    """Run the plan's phases one after another; per target: req/s, latencies, accepted deliveries."""
    plan = json.loads(plan_path.read_text())
    template = body_template()
    results = {name: {"latencies": [], "statuses": Counter(), "failures": Counter(), "accepted": [], "seconds": 0.0,
                      "slices": []}
               for name in plan["targets"]}
    for n, (name, warmup, seconds) in enumerate(plan["phases"]):
        target = plan["targets"][name]
        await run_phase(target["url"], target["secret"], template, warmup, seconds, plan["concurrency"],
                        f"{uuid.uuid4().hex[:6]}-{n}", results[name])
    summary = {}
    for name, r in results.items():
        ms = r["latencies"]
        summary[name] = {
            "rps": len(ms) / r["seconds"],
            "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99),
            "mean_ms": statistics.fmean(ms) if ms else float("nan"),
            "statuses": {str(k): v for k, v in r["statuses"].items()},
            "failures": dict(r["failures"]),
            "accepted": r["accepted"],
            "slices": r["slices"],  # req/s of each slice, in order
        }
    out.write_text(json.dumps(summary))


def load_plan(names: list[str], args: argparse.Namespace) -> list[tuple[str, float, float]]:
    """Slices of load alternating between the targets (A B B A A B ...), so that a change in the
    machine's background load during the run touches both alike; each slice starts with a short
    unmeasured warm-up. Every target gets `args.seconds` of measured load in all."""
    phases = []
    for n in range(args.slices):
        order = names if n % 2 == 0 else list(reversed(names))
        phases += [(name, args.warmup, args.seconds / args.slices) for name in order]
    return phases


def run_generator(targets: dict[str, dict[str, str]], args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        plan, out = Path(tmp) / "plan.json", Path(tmp) / "out.json"
        phases = load_plan(list(targets), args)
        plan.write_text(json.dumps({"targets": targets, "phases": phases, "concurrency": args.concurrency}))
        budget = sum(w + s for _, w, s in phases) + 120
        subprocess.run([sys.executable, "-m", "bench.ingress", "--generate", str(plan), "--out", str(out)],
                       cwd=ROOT, check=True, timeout=budget)
        return json.loads(out.read_text())


# --- state: throwaway databases, the checks ------------------------------------------------


def server_urls(stack: ExitStack) -> tuple[str, str]:
    """DATABASE_URL / REDIS_URL, else the embedded servers (stopped when `stack` closes)."""
    from fixfleet.config import Settings
    from fixfleet.embedded import EmbeddedServers
    from fixfleet.services import resolve_urls

    settings = Settings()
    embedded = EmbeddedServers(settings.home)
    stack.callback(embedded.stop)
    return resolve_urls(settings, embedded)


async def verify(database_url: str, redis_url: str, accepted: list[tuple[str, str]], drain_s: float = 60) -> dict[str, int]:
    """Every accepted delivery stored once in Postgres and enqueued once (after the relay drains)."""
    import asyncpg
    from redis.asyncio import Redis

    from fixfleet.models import QueuedTask
    from fixfleet.queue import Queue

    conn = await asyncpg.connect(database_url)
    redis = Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + drain_s
        while await conn.fetchval("SELECT count(*) FROM outbox") and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        stuck = await conn.fetchval("SELECT count(*) FROM outbox")
        rows = await conn.fetch(
            "SELECT d.delivery_id, t.key FROM webhook_deliveries d JOIN tasks t ON t.id = d.task_id WHERE d.source = 'sentry'"
        )
        stored = {r["delivery_id"]: r["key"] for r in rows}
        per_issue = await conn.fetch(
            "SELECT count(*) AS n FROM tasks GROUP BY external_ids->>'sentry_issue' HAVING count(*) > 1"
        )
        tasks = await conn.fetchval("SELECT count(*) FROM tasks")
        keys = {r["key"]: r["id"] for r in await conn.fetch("SELECT id, key FROM tasks")}
        queue = Queue(redis, "planning")
        entries: Counter[int] = Counter()
        for stream in queue.streams:
            for _, fields in await redis.xrange(stream):
                entries[QueuedTask.model_validate_json(fields[b"job"]).task_id] += 1
    finally:
        await conn.close()
        await redis.aclose()
    accepted_ids = Counter(request_id for request_id, _ in accepted)
    not_stored = sum(1 for request_id, key in accepted if stored.get(request_id) != key)
    not_enqueued = sum(1 for _, key in accepted if keys.get(key) is None or entries[keys[key]] == 0)
    return {
        "accepted": len(accepted),
        "tasks": tasks,
        "stream_entries": sum(entries.values()),
        "not_stored": not_stored,
        "not_enqueued": not_enqueued,
        "lost": not_stored + not_enqueued,
        "duplicated": sum(n - 1 for n in accepted_ids.values())  # one delivery answered 202 twice
        + sum(r["n"] - 1 for r in per_issue)  # one Sentry issue stored as several tasks
        + sum(n - 1 for n in entries.values() if n > 1),  # one task enqueued several times
        "outbox_left": stuck,
    }


# --- the two targets ------------------------------------------------------------------------


def app_env(database_url: str, redis_url: str, secret: str, home: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "FIXFLEET_SENTRY_CLIENT_SECRET": secret,
        "FIXFLEET_DEFAULT_REPO": REPO,
        "FIXFLEET_REPO_ALLOWLIST": '["*"]',
        "FIXFLEET_HOME": str(home),
    }


def wait_healthy(url: str, timeout_s: float, alive: Any = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if (alive is not None and not alive()) or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not become healthy")
        time.sleep(0.2)


# Ray starts every worker process niced by RayConfig's worker_niceness (so the Serve replicas,
# the relay, HAProxy): next to Postgres, the load generator and whatever else runs on a shared
# machine, a process at nice 15 gets a small share of a busy CPU, one at nice 0 a full one.
# uvicorn runs at the same niceness, made explicit on the Ray node, so that both sides compete
# alike (at 15 against 0, Serve measured 0.71-0.75 of uvicorn; with both at 0, 1.10).
RAY_WORKER_NICENESS = "RAY_worker_niceness"
RAY_DEFAULT_WORKER_NICENESS = 15  # Ray's default (ray_config_def.h)


def serve_node_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment of the Serve side's Ray node (its niceness spelled out)."""
    from fixfleet.platform import SERVE_NODE_ENV, local_node_env

    env = local_node_env()
    if args.ingress != "haproxy":
        env = {name: value for name, value in env.items() if name not in SERVE_NODE_ENV}
    env[RAY_WORKER_NICENESS] = str(RAY_DEFAULT_WORKER_NICENESS)
    for item in args.serve_env:
        name, _, value = item.partition("=")
        env[name] = value
    return env


def ingress_replicas(args: argparse.Namespace) -> int:
    """How many ingress replicas the Serve side runs: --replicas, else the config file's number."""
    from fixfleet.platform import DEPLOYMENT_NAME, load_config

    if args.replicas is not None:
        return args.replicas
    for app in load_config(args.config).applications:
        for deployment in app.deployments:
            if deployment.name == DEPLOYMENT_NAME and isinstance(deployment.num_replicas, int):
                return deployment.num_replicas
    return 1


@contextmanager
def uvicorn_target(env: dict[str, str], args: argparse.Namespace) -> Iterator[str]:
    """The same app under plain uvicorn (uvloop + httptools): as many worker processes as Serve
    runs ingress replicas, each with its relay, at the Ray workers' niceness."""
    import psutil

    port = free_port()
    niceness = serve_node_env(args)[RAY_WORKER_NICENESS]
    command = ["nice", "-n", niceness, sys.executable, "-m", "bench.ingress", "--uvicorn-worker", str(port)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FIXFLEET_")}
    workers = [subprocess.Popen(command, cwd=ROOT, env=clean | env) for _ in range(ingress_replicas(args))]

    def listening() -> bool:  # every worker up (a worker listens once its app has started)
        return all(any(c.status == psutil.CONN_LISTEN and c.laddr.port == port
                       for c in psutil.Process(w.pid).net_connections("tcp")) for w in workers)

    try:
        deadline = time.monotonic() + 60
        while not listening():
            if any(w.poll() is not None for w in workers) or time.monotonic() > deadline:
                raise RuntimeError("the uvicorn workers did not start")
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, 60)
        yield url
    finally:
        for worker in workers:  # uvicorn shuts down gracefully on SIGTERM (SIGINT ends in a KeyboardInterrupt traceback)
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def uvicorn_worker(port: int) -> None:
    """One uvicorn worker on a socket of its own bound with SO_REUSEPORT: the kernel spreads the
    connections over the workers by their addresses. (uvicorn's --workers share one listening
    socket, and a burst of keep-alive connections went nearly all to the worker that was in
    accept(): 32/0 or 31/1 per slice.)"""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config("serve_app.app:create_app", factory=True, log_level="warning", loop="uvloop",
                            http="httptools")
    uvicorn.Server(config).run(sockets=[sock])


@contextmanager
def serve_target(env: dict[str, str], args: argparse.Namespace) -> Iterator[str]:
    """The Serve config file deployed as `serve run` does it, on a private local Ray node, without
    the agent pools (uvicorn has none either: what is measured is the ingress and its relay)."""
    from fixfleet.platform import load_config, running_config

    port = free_port()
    config = load_config(args.config, http_port=port, http_host="127.0.0.1", env_vars=env,
                         num_replicas=args.replicas, max_ongoing_requests=args.max_ongoing,
                         args={"planners_max": 0, "executors_max": 0})  # the ingress and its relay only
    with running_config(config, node_env=serve_node_env(args), num_cpus=args.ray_cpus) as local:
        wait_healthy(local.url, 120)
        yield local.url


TARGETS = {"uvicorn": (uvicorn_target, 10), "serve": (serve_target, 11)}  # name -> (start it, Redis db)


@contextmanager
def alone_on_this_machine() -> Iterator[None]:
    """One run at a time: the Redis dbs are fixed, so a second run at once flushed the first's
    and its checks counted the other's stream entries as duplicates."""
    with open(Path(tempfile.gettempdir()) / "fixfleet-bench-ingress.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit("bench.ingress: another run is under way on this machine (it uses the same "
                             "Redis dbs 10 and 11); run again when it has ended") from None
        yield


def run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Both targets up side by side, each on its own database and Redis db; alternating load; checks."""
    names = list(TARGETS) if args.target == "both" else [args.target]
    with alone_on_this_machine(), ExitStack() as servers:
        server, redis_server = server_urls(servers)
        results = measure(names, server, redis_server, args)
    for result in results.values():
        print(json.dumps(result), flush=True)
    return results


def measure(names: list[str], server: str, redis_server: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    from fixfleet.scratch import create_database, drop_database, flush_redis, redis_db_url

    state: dict[str, dict[str, str]] = {}
    ready: dict[str, float] = {}
    try:
        with ExitStack() as stack:
            home = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            for name in names:
                start, db = TARGETS[name]
                item = state[name] = {"secret": uuid.uuid4().hex, "redis_url": redis_db_url(redis_server, db)}
                item["database_url"] = asyncio.run(create_database(server, "fixfleet_bench"))
                asyncio.run(flush_redis(item["redis_url"]))
                env = app_env(item["database_url"], item["redis_url"], item["secret"], home / name)
                started = time.perf_counter()
                item["url"] = stack.enter_context(start(env, args))
                ready[name] = time.perf_counter() - started
            load = run_generator({n: {"url": f"{state[n]['url']}/webhooks/sentry", "secret": state[n]["secret"]}
                                  for n in names}, args)
            results = {}
            for name in names:  # checked while the apps still run: their relays drain the outbox
                accepted = [tuple(a) for a in load[name].pop("accepted")]
                checks = asyncio.run(verify(state[name]["database_url"], state[name]["redis_url"], accepted))
                results[name] = {"target": name, "ready_s": round(ready[name], 1),
                                 **{k: round(v, 2) if isinstance(v, float) else v for k, v in load[name].items()},
                                 **checks}
    finally:
        for item in state.values():
            if "database_url" in item:
                asyncio.run(drop_database(server, item["database_url"]))
            asyncio.run(flush_redis(item["redis_url"]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds of load per target")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--slices", type=int, default=4, help="alternate the targets this many times")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds at the start of each slice")
    parser.add_argument("--target", choices=("both", "serve", "uvicorn"), default="both")
    parser.add_argument("--replicas", type=int, default=None,
                        help="override num_replicas of the config (uvicorn runs as many workers)")
    parser.add_argument("--max-ongoing", type=int, default=None, help="override max_ongoing_requests")
    parser.add_argument("--ray-cpus", type=float, default=None, help="logical CPUs of the local Ray node")
    parser.add_argument("--ingress", choices=("haproxy", "proxy"), default="haproxy",
                        help="haproxy (default): SERVE_NODE_ENV of fixfleet/platform.py, HAProxy in front of "
                        "the replicas' own HTTP servers; proxy: Serve's Python HTTP proxy actor")
    parser.add_argument("--serve-env", action="append", default=[], metavar="NAME=VALUE",
                        help="more environment of the Ray node (RAY_SERVE_* knobs); repeatable")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the Serve config file to deploy")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)  # internal: be the load generator
    parser.add_argument("--uvicorn-worker", type=int, help=argparse.SUPPRESS)  # internal: be a uvicorn worker
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.generate:
        import uvloop

        uvloop.run(generate(args.generate, args.out))
        return
    if args.uvicorn_worker:
        uvicorn_worker(args.uvicorn_worker)
        return

    results = run(args)
    serve, plain = results.get("serve"), results.get("uvicorn")
    print(json.dumps({
        "serve_rps": round(serve["rps"], 1) if serve else None,
        "uvicorn_rps": round(plain["rps"], 1) if plain else None,
        "ratio": round(serve["rps"] / plain["rps"], 3) if serve and plain and plain["rps"] else None,
        "serve_p99_ms": round(serve["p99_ms"], 2) if serve else None,
        "uvicorn_p99_ms": round(plain["p99_ms"], 2) if plain else None,
        "lost": sum(r["lost"] for r in results.values()),
        "duplicated": sum(r["duplicated"] for r in results.values()),
    }))


if __name__ == "__main__":
    main()
