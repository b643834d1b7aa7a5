"""Retention: old closed tasks, their audit trail and old webhook delivery ids are deleted; open
tasks and recent ones stay; 0 keeps everything. Logs rotate at their size."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from fixfleet.config import Settings
from fixfleet.embedded import rotate
from fixfleet.models import NewTask, TaskStatus
from fixfleet.platform import Platform, PlatformOptions
from fixfleet.processes import ProcessRef
from fixfleet.retention import Retention
from fixfleet.store import Store
from fixfleet.store.records import Delivery


async def aged(store: Store, title: str, path: list[str], days: float) -> int:
    task, _ = await store.create_task(NewTask(repo="file:///r", title=title))
    for status in path:
        await store.transition(task.id, TaskStatus(status), actor="t")
    await store.pool.execute("UPDATE tasks SET updated_at = now() - make_interval(days => $2::int) WHERE id = $1",
                             task.id, int(days))
    return task.id


async def test_old_closed_tasks_and_old_delivery_ids_go_and_the_rest_stays(store: Store, settings: Settings) -> None:
    old_done = await aged(store, "old done", ["CANCELLED"], 200)
    recent_done = await aged(store, "recent done", ["CANCELLED"], 10)
    old_open = await aged(store, "old but open", ["PLANNING", "AWAITING_APPROVAL"], 200)
    for delivery, days in (("old", 40), ("new", 1)):
        await store.record_delivery(Delivery("github", delivery), old_done)
        await store.pool.execute("UPDATE webhook_deliveries SET received_at = now() - make_interval(days => $2::int)"
                                 " WHERE delivery_id = $1", delivery, days)
    kept = {"task_retention_days": 180, "delivery_retention_days": 30}
    retention = Retention(store, settings.model_copy(update=kept))

    purged = await retention.run_once()

    assert (purged.tasks, purged.deliveries) == (1, 1)
    left = {r["id"] for r in await store.pool.fetch("SELECT id FROM tasks")}
    assert left == {recent_done, old_open}
    assert await store.pool.fetchval("SELECT count(*) FROM task_events WHERE task_id = $1", old_done) == 0
    assert await store.pool.fetchval("SELECT count(*) FROM task_events WHERE task_id = $1", old_open) == 3
    assert [r["delivery_id"] for r in await store.pool.fetch("SELECT delivery_id FROM webhook_deliveries")] == ["new"]
    assert await store.record_delivery(Delivery("github", "new"), None) is False  # still recognised as seen


async def test_zero_keeps_everything(store: Store, settings: Settings) -> None:
    await aged(store, "ancient", ["CANCELLED"], 3000)
    await store.record_delivery(Delivery("github", "ancient"))
    await store.pool.execute("UPDATE webhook_deliveries SET received_at = now() - interval '3000 days'")
    keep = settings.model_copy(update={"task_retention_days": 0, "delivery_retention_days": 0})
    assert (await Retention(store, keep).run_once()).tasks == 0
    assert await store.pool.fetchval("SELECT count(*) FROM tasks") == 1
    assert await store.pool.fetchval("SELECT count(*) FROM webhook_deliveries") == 1


def test_a_log_past_its_size_moves_aside_and_the_oldest_falls_off(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    for n in range(4):
        log.write_text(f"run {n}\n" * 100)
        rotate(log, max_bytes=10, backups=2)
    assert not log.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.log.1", "server.log.2"]
    assert (tmp_path / "server.log.1").read_text().startswith("run 3")
    log.write_text("small")
    rotate(log, max_bytes=10, backups=2)
    assert log.read_text() == "small"


def test_the_ray_temp_dir_a_crashed_run_left_is_removed_at_the_next_start(tmp_path: Path, settings: Settings) -> None:
    crashed = subprocess.Popen(["sleep", "60"])
    ref = ProcessRef.of(crashed.pid)
    crashed.kill()
    crashed.wait()
    left = Path(tempfile.mkdtemp(prefix="ff-ray-"))
    (left / "session_latest").mkdir()
    note = settings.home / "run" / "ray-temp.json"
    note.parent.mkdir(parents=True)
    note.write_text(json.dumps({"dir": str(left), "pid": ref.pid, "started": ref.started}))
    fresh = Platform(settings, PlatformOptions())._ray_temp_dir()  # noqa: SLF001 - the start's first step
    try:
        assert not left.exists() and fresh.is_dir()
        assert json.loads(note.read_text())["dir"] == str(fresh)
        again = Platform(settings, PlatformOptions())._ray_temp_dir()  # noqa: SLF001
        assert fresh.is_dir(), "a live run's temp dir was removed"
        shutil.rmtree(again)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def test_ray_logs_rotate_at_the_platforms_limits_unless_the_operator_set_them() -> None:
    from fixfleet.config import load_settings
    from fixfleet.platform import RAY_BOUNDS, ray_node_settings

    settings = load_settings(log_max_bytes=2 * 1024**2, log_backups=3)
    assert ray_node_settings(settings, {}) == {"RAY_ROTATION_MAX_BYTES": str(2 * 1024**2), "RAY_ROTATION_BACKUP_COUNT": "3",
                                               "RAY_BACKEND_LOG_LEVEL": "warning", "GRPC_VERBOSITY": "ERROR",
                                               **RAY_BOUNDS}
    assert ray_node_settings(settings, {"RAY_ROTATION_BACKUP_COUNT": "9"})["RAY_ROTATION_BACKUP_COUNT"] == "9"
    assert ray_node_settings(settings, {"RAY_BACKEND_LOG_LEVEL": "info"})["RAY_BACKEND_LOG_LEVEL"] == "info"
    assert ray_node_settings(settings, {"MALLOC_ARENA_MAX": "8"})["MALLOC_ARENA_MAX"] == "8"
