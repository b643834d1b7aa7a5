"""The durable store: migrations, keys, deliveries, the audit trail."""

from __future__ import annotations

import asyncio
import os

import asyncpg

from fixfleet.models import NewTask, Priority, Source, TaskStatus
from fixfleet.scratch import create_database, drop_database
from fixfleet.store import Delivery, Store
from fixfleet.store.creation import FIND_DELIVERED, LINK_DELIVERIES
from fixfleet.store.schema import migration_files


async def test_migrations_twice_and_concurrently(postgres_server_url: str) -> None:
    url = await create_database(postgres_server_url)
    try:
        stores = await asyncio.gather(*(Store.connect(url, migrate=False) for _ in range(4)))
        applied = await asyncio.gather(*(s.migrate() for s in stores))
        every = [name for name, _ in migration_files()]
        assert every[:2] == ["0001_tasks", "0002_control"] and "0004_retention" in every
        assert sorted(len(a) for a in applied) == [0, 0, 0, len(every)]  # exactly one process applied them
        assert await stores[0].migrate() == []  # and a second run applies nothing
        rows = await stores[0].pool.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == every
        for s in stores:
            await s.close()
    finally:
        await drop_database(postgres_server_url, url)


async def test_create_task_keys_event_and_outbox(store: Store) -> None:
    first, created = await store.create_task(NewTask(repo="file:///r", title="a", priority=Priority.HIGH))
    second, _ = await store.create_task(NewTask(repo="file:///r", title="b"))
    assert created and first.key == f"FF-{first.id}" and second.id == first.id + 1
    assert first.status == TaskStatus.RECEIVED and first.version == 1
    assert (await store.get_task(first.key)).id == first.id
    assert (await store.get_task("ff-%d" % first.id)).id == first.id
    events = await store.events(first.id)
    assert [(e.from_status, e.to_status) for e in events] == [(None, TaskStatus.RECEIVED)]
    outbox = await store.pool.fetch("SELECT task_id, queue, priority FROM outbox ORDER BY id")
    assert [tuple(r) for r in outbox] == [(first.id, "planning", "high"), (second.id, "planning", "normal")]


async def test_same_delivery_twice_is_one_task(store: Store) -> None:
    delivery = Delivery("sentry", "req-1")
    new = NewTask(source=Source.SENTRY, repo="file:///r", title="KeyError")
    results = await asyncio.gather(*(store.create_task(new, delivery=delivery) for _ in range(5)))
    assert len({task.id for task, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert await store.pool.fetchval("SELECT count(*) FROM tasks") == 1
    assert await store.pool.fetchval("SELECT count(*) FROM outbox") == 1
    again, created = await store.create_task(new, delivery=delivery)
    assert not created and again.id == results[0][0].id


async def test_transition_records_changes_and_reason(store: Store) -> None:
    task, _ = await store.create_task(NewTask(repo="file:///r", title="a"))
    await store.transition(task.id, TaskStatus.PLANNING, actor="planner-1", reason="claimed")
    plan = {"root_cause": "off by one", "confidence": 0.8}
    done = await store.transition(
        task.id, TaskStatus.AWAITING_APPROVAL, actor="planner-1", reason="plan ready",
        data={"pr": 7}, changes={"plan": plan, "plan_version": 1, "branch": "fixfleet/FF-1"},
    )
    assert done.plan == plan and done.plan_version == 1 and done.branch == "fixfleet/FF-1"
    last = (await store.events(task.id))[-1]
    assert (last.actor, last.reason, last.data) == ("planner-1", "plan ready", {"pr": 7})


async def test_find_open_task_by_external_id(store: Store) -> None:
    new = NewTask(source=Source.SENTRY, repo="file:///r", title="a", external_ids={"sentry_issue": "42"})
    task, _ = await store.create_task(new)
    assert (await store.find_task(external_key="sentry_issue", external_id="42")).id == task.id
    await store.transition(task.id, TaskStatus.CANCELLED, actor="t")
    assert await store.find_task(external_key="sentry_issue", external_id="42") is None


async def test_concurrent_creates_are_written_together_each_caller_gets_its_task(store: Store) -> None:
    news = [NewTask(repo=f"file:///r{i}", title=f"task {i}", priority=list(Priority)[i % 4]) for i in range(40)]
    results = await asyncio.gather(*(store.create_task(new, actor=f"api:{i}") for i, new in enumerate(news)))
    assert all(created for _, created in results)
    assert [(t.title, t.repo, t.priority) for t, _ in results] == [(n.title, n.repo, n.priority) for n in news]
    assert len({t.id for t, _ in results}) == 40
    events = await store.pool.fetch("SELECT task_id, actor FROM task_events ORDER BY task_id")
    by_task = {t.id: i for i, (t, _) in enumerate(results)}
    assert sorted((by_task[r["task_id"]], r["actor"]) for r in events) == [(i, f"api:{i}") for i in range(40)]
    outbox = await store.pool.fetch("SELECT task_id, priority FROM outbox")
    assert sorted((r["task_id"], r["priority"]) for r in outbox) == sorted((t.id, t.priority.value) for t, _ in results)


async def test_deliveries_in_one_batch_new_repeated_and_seen_before(store: Store) -> None:
    old, _ = await store.create_task(NewTask(source=Source.GITHUB, repo="file:///r", title="old"), delivery=Delivery("github", "d-old"))
    calls = [("d-old", "old again"), ("d-1", "one"), ("d-1", "one again"), (None, "plain"), ("d-2", "two")]
    results = await asyncio.gather(*(
        store.create_task(NewTask(source=Source.GITHUB, repo="file:///r", title=title),
                          delivery=Delivery("github", key) if key else None)
        for key, title in calls
    ))
    (again, c0), (one, c1), (one_again, c2), (plain, c3), (two, c4) = results
    assert (c0, c1, c2, c3, c4) == (False, True, False, True, True)
    assert again.id == old.id and one_again.id == one.id and one.title == "one"
    assert plain.title == "plain" and two.title == "two"
    assert await store.pool.fetchval("SELECT count(*) FROM tasks") == 4
    linked = await store.pool.fetch("SELECT delivery_id, task_id FROM webhook_deliveries ORDER BY delivery_id")
    assert [tuple(r) for r in linked] == [("d-1", one.id), ("d-2", two.id), ("d-old", old.id)]


async def test_a_task_postgres_refuses_fails_alone(store: Store) -> None:
    good = [NewTask(repo="file:///r", title=f"good {i}") for i in range(5)]
    too_big = os.urandom(6000).hex()  # Postgres refuses a key of the one-open-task index over 2,704 bytes
    bad = NewTask(repo="file:///r", title="too big", external_ids={"sentry_issue": too_big})
    results = await asyncio.gather(*(store.create_task(n) for n in [*good[:3], bad, *good[3:]]), return_exceptions=True)
    assert isinstance(results[3], asyncpg.PostgresError)
    assert [t.title for t, _ in results[:3] + results[4:]] == [n.title for n in good]
    assert await store.pool.fetchval("SELECT count(*) FROM tasks") == 5


async def generic_plan(store: Store, statement: str, args: str) -> str:
    """The plan Postgres keeps for `statement` once it stops planning each call anew."""
    async with store.pool.acquire() as conn:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        try:
            await conn.execute(f"PREPARE checked AS {statement}")
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE checked({args})"))
            await conn.execute("DEALLOCATE checked")
        finally:
            await conn.execute("RESET plan_cache_mode")
    return plan


async def test_deliveries_are_linked_and_found_through_the_keys_whatever_plan_postgres_cached(store: Store) -> None:
    """A plan made while webhook_deliveries was nearly empty is kept for the connection's life:
    linking a batch's deliveries, or finding the tasks of redelivered ones, must not turn into a
    scan of every delivery and task ever stored (the joins to an unnest these replace cached
    sequential scans: 3.8 ms a batch at 50,000 deliveries, and growing)."""
    link = await generic_plan(store, LINK_DELIVERIES, "'{sentry}', '{d-1}', '{1}'")
    assert "Seq Scan" not in link and "Conflict Arbiter Indexes: webhook_deliveries_pkey" in link, link
    found = await generic_plan(store, FIND_DELIVERED, "'{sentry}', '{d-1}'")
    assert "Seq Scan" not in found and "webhook_deliveries_pkey" in found and "tasks_pkey" in found, found


async def test_text_postgres_cannot_hold_is_stored_as_a_replacement_character(store: Store) -> None:
    """A NUL or a lone surrogate (valid JSON: "\\u0000", "\\ud800") in a title, a reason or a
    context made Postgres refuse the row, and the request that carried it was answered 500
    (found by the API fuzzer: a cancel reason)."""
    task, _ = await store.create_task(NewTask(repo="file:///r", title="boom\x00", body="b\x00",
                                              external_ids={"sentry_issue": "1\x00"}),
                                      delivery=Delivery("sentry", "d\x00\udc00"))
    moved = await store.transition(task.id, TaskStatus.CANCELLED, actor="api:lead", reason="dup\x00\udad5",
                                   context={"note": {"k\x00": ["\ud800", "ok 😀", "\\u0000 as typed"]}})
    assert (moved.title, moved.body, moved.external_ids) == ("boom\ufffd", "b\ufffd", {"sentry_issue": "1\ufffd"})
    assert moved.context["note"] == {"k\ufffd": ["\ufffd", "ok 😀", "\\u0000 as typed"]}
    assert (await store.events(task.id))[-1].reason == "dup\ufffd\ufffd"
    assert await store.pool.fetchval("SELECT delivery_id FROM webhook_deliveries") == "d\ufffd\ufffd"
