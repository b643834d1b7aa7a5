"""Work held by an agent that is gone goes to the next agent at once, not after its lease; an
agent that may be alive keeps it. The decision's evidence, the release on real Redis, and the
reconciler's fast path for a claimed task whose entry vanished."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from contextlib import suppress

import pytest
from redis.asyncio import Redis

from fixfleet.config import Settings
from fixfleet.models import NewTask, TaskStatus
from fixfleet.outbox import OutboxRelay, reconcile
from fixfleet.overview import Heartbeat
from fixfleet.processes import ProcessRef, this_node
from fixfleet.queue import LeaseLost, Queue
from fixfleet.services import AGENTS_KEY, make_queues
from fixfleet.store import Store
from fixfleet.takeover import Liveness, forget_gone, release_gone
from serve_app.roster import agent_names
from tests.reliability.harness import PrivateRedis

NOW = 1_000_000.0
LOST_AFTER_S = 60.0


def beat(name: str, **fields: object) -> Heartbeat:
    return Heartbeat(name=name, **{"at": NOW - 1, **fields})


def liveness(*beats: Heartbeat, roster: set[str] | None = None) -> Liveness:
    return Liveness({b.name: b for b in beats}, frozenset(roster) if roster is not None else None, LOST_AFTER_S,
                    node=this_node(), now=NOW)


def dead_process() -> ProcessRef:
    child = subprocess.Popen(["sleep", "60"])
    ref = ProcessRef.of(child.pid)
    child.kill()
    child.wait()
    return ref


def test_an_agent_serve_no_longer_runs_is_gone_whatever_its_heartbeat_says() -> None:
    me = ProcessRef.current()
    fresh = beat("executor-old", pid=me.pid, started=me.started, node=this_node())
    assert liveness(fresh, roster={"executor-new"}).gone("executor-old") == "the platform no longer runs it"
    assert liveness(fresh, roster={"executor-old", "executor-new"}).gone("executor-old") is None


def test_a_dead_process_on_this_node_is_gone_and_a_reused_pid_does_not_revive_it() -> None:
    gone = dead_process()
    assert "is gone" in liveness(beat("a", pid=gone.pid, started=gone.started, node=this_node())).gone("a")
    me = ProcessRef.current()  # a live process now has the pid, but it started at another moment
    assert "is gone" in liveness(beat("a", pid=me.pid, started=me.started - 30, node=this_node())).gone("a")
    assert liveness(beat("a", pid=me.pid, started=me.started, node=this_node())).gone("a") is None


def test_a_pid_on_another_node_proves_nothing() -> None:
    gone = dead_process()
    assert liveness(beat("a", pid=gone.pid, started=gone.started, node="elsewhere/boot")).gone("a") is None


def test_a_late_heartbeat_is_not_enough_but_one_far_past_the_bound_is() -> None:
    assert liveness(beat("a", at=NOW - LOST_AFTER_S / 2)).gone("a") is None  # a long blocking call
    assert "no heartbeat for" in liveness(beat("a", at=NOW - LOST_AFTER_S - 5)).gone("a")
    assert liveness().gone("never-seen") is None  # no evidence either way: its lease decides


def test_an_agent_that_beat_since_the_claim_without_the_task_has_left_it() -> None:
    quiet_s = 30.0  # claimed 30 s ago
    other = beat("a", at=NOW - 5, busy_with=8)
    assert "something else" in liveness(other).left("a", 7, quiet_s)
    assert liveness(beat("a", at=NOW - 5, busy_with=7)).left("a", 7, quiet_s) is None
    assert liveness(beat("a", at=NOW - 40, busy_with=None)).left("a", 7, quiet_s) is None  # written before the claim
    assert liveness().left(None, 7, quiet_s) is None


def test_serve_details_name_every_replica_and_an_absent_app_names_none() -> None:
    details = {"applications": {"fixfleet": {"deployments": {
        "executor": {"replicas": [{"replica_id": "ab12", "state": "RUNNING"},
                                  {"replica_id": "cd34", "state": "STOPPING"}]},  # draining: still alive
        "planner": {"replicas": [{"replica_id": "ef56", "state": "STARTING"}]},  # named before it runs
        "ingress": {"replicas": [{"replica_id": "zz99", "state": "RUNNING"}]}}}}}
    assert agent_names(details, "fixfleet") == {"executor-ab12", "executor-cd34", "planner-ef56"}
    assert agent_names(details, "another-app") is None  # unknown, not "nobody": no mass takeover


async def test_a_released_claim_goes_to_the_next_agent_at_once_and_the_old_holder_loses_it(redis: Redis) -> None:
    queue = Queue(redis, "execution", lease_s=60.0)  # a lease nobody waits out in this test
    await queue.enqueue(1)
    await queue.enqueue(2)
    held = await queue.dequeue("executor-old", block_s=0)
    other = await queue.dequeue("executor-live", block_s=0)
    assert (held.task_id, other.task_id) == (1, 2)
    assert await queue.dequeue("executor-new", block_s=0) is None  # nothing free, nothing expired

    assert await queue.release("executor-old") == 1
    taken = await Queue(redis, "execution", lease_s=60.0).dequeue("executor-new", block_s=0)  # another agent's
    assert taken.task_id == 1 and taken.deliveries == 2  # a redelivery: the agent takes the task over
    with pytest.raises(LeaseLost):
        await queue.heartbeat(held)
    await queue.heartbeat(other)  # a live agent's claim was not touched
    assert await queue.holders() == {"executor-new": 1, "executor-live": 1}


async def test_a_released_claim_behind_many_live_ones_is_found(redis: Redis) -> None:
    queue = Queue(redis, "execution", lease_s=60.0)
    for n in range(15):
        await queue.enqueue(n)
        await queue.dequeue(f"busy-{n}", block_s=0)
    await queue.enqueue(99)
    await queue.dequeue("gone", block_s=0)  # the last of 16 claims: past XAUTOCLAIM's first look
    await queue.release("gone")
    assert (await Queue(redis, "execution", lease_s=60.0).dequeue("next", block_s=0)).task_id == 99


async def test_release_gone_hands_over_only_what_the_dead_held(redis: Redis) -> None:
    queues = {"execution": Queue(redis, "execution", lease_s=60.0)}
    for n, agent in enumerate(["executor-dead", "executor-alive"]):
        await queues["execution"].enqueue(n)
        await queues["execution"].dequeue(agent, block_s=0)
    me = ProcessRef.current()
    await redis.hset(AGENTS_KEY, mapping={
        "executor-alive": json.dumps({"pid": me.pid, "started": me.started, "node": this_node(), "at": time.time()})})
    look = await Liveness.look(redis, None, stale_after_s=LOST_AFTER_S)
    assert look.gone("executor-alive") is None
    released = await release_gone(queues, Liveness(look.beats, frozenset({"executor-alive"}), LOST_AFTER_S))
    assert released == {"execution": ["executor-dead"]}
    assert (await Queue(redis, "execution", lease_s=60.0).dequeue("executor-next", block_s=0)).task_id == 0


async def test_a_claimed_task_whose_entry_vanished_comes_back_at_once_when_its_agent_is_gone(
        store: Store, redis: Redis) -> None:
    queues = {name: Queue(redis, name, lease_s=60.0) for name in ("planning", "execution")}
    gone, _ = await store.create_task(NewTask(repo="file:///r", title="gone"))
    busy, _ = await store.create_task(NewTask(repo="file:///r", title="busy"))
    await store.transition(gone.id, TaskStatus.PLANNING, actor="planner-old")
    await store.transition(busy.id, TaskStatus.PLANNING, actor="planner-live")
    await store.pool.execute("DELETE FROM outbox")  # Redis came back empty: no entry for either
    look = Liveness({"planner-live": beat("planner-live", at=time.time(), busy_with=busy.id)},
                    frozenset({"planner-live"}), LOST_AFTER_S)

    report = await reconcile(store, queues, claimed_stale_s=600, liveness=look)
    assert report.requeued == [gone.id]  # not after ten quiet minutes: its agent is gone
    assert (await reconcile(store, queues, claimed_stale_s=600)).requeued == []  # without evidence: the quiet rule


async def test_the_heartbeat_line_of_a_long_gone_agent_is_forgotten(redis: Redis) -> None:
    me = ProcessRef.current()
    now = time.time()
    await redis.hset(AGENTS_KEY, mapping={
        "executor-killed": json.dumps({"at": now - LOST_AFTER_S - 10}),  # replaced by Serve long ago
        "executor-just-killed": json.dumps({"at": now - 5}),  # still shown as lost for a while
        "executor-alive": json.dumps({"pid": me.pid, "started": me.started, "node": this_node(), "at": now})})
    look = await Liveness.look(redis, None, stale_after_s=LOST_AFTER_S)
    look = Liveness(look.beats, frozenset({"executor-alive"}), LOST_AFTER_S)
    assert await forget_gone(redis, look) == ["executor-killed"]
    assert set(await redis.hkeys(AGENTS_KEY)) == {b"executor-just-killed", b"executor-alive"}


class FixedRoster:
    """The agents Serve would list: a value, as `serve_app.roster.ServeRoster` returns it."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    async def agent_names(self) -> set[str] | None:
        return self.names


async def test_a_running_relay_hands_a_gone_agents_claim_over_by_itself(store: Store, redis: Redis) -> None:
    queues = {name: Queue(redis, name, lease_s=600.0) for name in ("planning", "execution")}
    task, _ = await store.create_task(NewTask(repo="file:///r", title="claimed by a replica that died"))
    relay = OutboxRelay(store, queues, poll_s=0.05, reconcile_every_s=3600, takeover_every_s=0.1,
                        roster=FixedRoster({"planner-new"}), agent_lost_s=LOST_AFTER_S)
    await relay.drain()
    assert (await queues["planning"].dequeue("planner-old", block_s=0)).task_id == task.id
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:
        successor = Queue(redis, "planning", lease_s=600.0)
        taken = None
        for _ in range(100):  # a lease of ten minutes: only the release can hand it over this soon
            if taken := await successor.dequeue("planner-new", block_s=0.1):
                break
        assert taken is not None and taken.task_id == task.id and taken.deliveries == 2
    finally:
        stop.set()
        await asyncio.wait_for(running, 5)


async def test_a_redis_restart_makes_the_relay_reconcile_at_once(store: Store, settings: Settings) -> None:
    server = PrivateRedis()  # killed and started again, it comes back empty with a new run id
    server.start()
    client = Redis.from_url(server.url)
    try:
        queues = make_queues(client, settings)
        relay = OutboxRelay(store, queues, poll_s=0.05, reconcile_every_s=3600, takeover_every_s=0.1)
        stop = asyncio.Event()
        running = asyncio.create_task(relay.run(stop))
        try:
            task, _ = await store.create_task(NewTask(repo="file:///r", title="waiting through a Redis restart"))
            for _ in range(100):
                if task.id in {tid for tid, _ in await queues["planning"].entries()}:
                    break
                await asyncio.sleep(0.05)
            server.kill()
            await asyncio.to_thread(server.start)  # same port, empty
            back = False
            for _ in range(200):  # the next reconcile is an hour away: only the restart's notice brings it back
                with suppress(Exception):
                    if back := task.id in {tid for tid, _ in await queues["planning"].entries()}:
                        break
                await asyncio.sleep(0.05)
            assert back
        finally:
            stop.set()
            await asyncio.wait_for(running, 5)
    finally:
        await client.aclose()
        server.kill()
