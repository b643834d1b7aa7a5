"""Work queues on Redis Streams: priorities, leases, delayed retries, a dead letter.

A queue (`planning`, `execution`) is four streams, one per priority, read by one consumer
group. Delivery is at least once: read -> handle -> ack. A consumer working long renews
its claim (`heartbeat`); an entry whose claim went idle past the lease is taken over by the
next consumer that asks (XAUTOCLAIM). Failed handling is retried after an exponential
backoff (a sorted set of due times, promoted back into the stream when due) until the last
attempt, then the entry goes to the dead-letter stream. Works on Redis 6.2 and newer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from fixfleet.models import WORK, Priority, QueuedTask
from fixfleet.redis_line import Line

QUEUES = ("planning", "execution")
GROUP = "agents"

# Finish a claim only while this consumer still holds it: after a takeover the old holder
# must not ack an entry another consumer now owns.
_OWNED = """
local function owned(stream, group, id, consumer)
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  return #p > 0 and p[1][2] == consumer
end
local function ack_if_owned(stream, group, id, consumer)
  if not owned(stream, group, id, consumer) then return 0 end
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
  return 1
end
"""

# Promote due retries, then take (1) an entry whose claim expired, else (2) a new entry,
# scanning priorities from the highest: one round trip, and never a lower priority first.
# KEYS: delayed zset, then one stream per priority (highest first).
# ARGV: group, consumer, now (epoch seconds), lease_ms, reclaim ('1' to look for expired
# claims).
# Returns {stream index (1-based), entry id, job json, delivery count}, or when there is
# nothing {0, due time of the next delayed retry ('' if none)} so the caller knows how long
# it may block without a second round trip.
_CLAIM_NEXT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[3], 'LIMIT', 0, 100)
for _, member in ipairs(due) do
  local rank = cjson.decode(member)['rank']
  redis.call('XADD', KEYS[rank + 2], '*', 'job', member)
  redis.call('ZREM', KEYS[1], member)
end
for i = 2, (ARGV[5] == '1') and #KEYS or 1 do
  -- XAUTOCLAIM looks at ten pending entries per call: follow its cursor through the stream's
  -- claims (a bounded number of calls) so an expired one behind live ones is found too.
  local cursor = '0-0'
  for _ = 1, 20 do
    local claimed = redis.call('XAUTOCLAIM', KEYS[i], ARGV[1], ARGV[2], ARGV[4], cursor, 'COUNT', 1)
    for _, entry in ipairs(claimed[2]) do
      if entry and entry ~= false and entry[2] then
        local info = redis.call('XPENDING', KEYS[i], ARGV[1], entry[1], entry[1], 1)
        return {i - 1, entry[1], entry[2][2], info[1][4]}
      end
    end
    cursor = claimed[1]
    if cursor == '0-0' then break end
  end
end
for i = 2, #KEYS do
  local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[i], '>')
  if read then
    local entry = read[1][2][1]
    return {i - 1, entry[1], entry[2][2], 1}
  end
end
local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, next_due[2] or ''}
"""

# Add a batch of entries in one command (a pipeline of XADDs costs a command each).
# KEYS: one stream per priority (highest first). ARGV: job json, each with its `rank`.
_ADD = """
local ids = {}
for i, job in ipairs(ARGV) do
  ids[i] = redis.call('XADD', KEYS[cjson.decode(job)['rank'] + 1], '*', 'job', job)
end
return ids
"""

# Renew (reset the idle time of) or finish a claim this consumer still holds.
# KEYS: stream. ARGV: group, entry id, consumer, mode ('renew' | 'ack').
_IF_OWNER = _OWNED + """
if ARGV[4] == 'ack' then return ack_if_owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) end
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"""


# Make every entry a consumer holds in a stream claimable at once, as if its lease had run out:
# its idle time is set past the lease (its delivery count kept), so the next consumer that looks
# for expired claims takes it over. A holder that is alive after all renews it and keeps it.
# KEYS: stream. ARGV: group, consumer, idle_ms.
_RELEASE = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1000, ARGV[2])
for _, p in ipairs(pending) do
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, p[1], 'IDLE', ARGV[3], 'JUSTID')
end
return #pending
"""
RECLAIM_EVERY_S = 5.0
DEAD_LETTERS_KEPT = 10_000  # the newest; the task's own row keeps why it failed  # the longest an agent goes without looking for expired (or released) claims


class LeaseLost(Exception):
    """This consumer's claim on an entry was taken over by another consumer."""


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed queue entry: the task message plus where it sits in Redis."""

    message: QueuedTask
    stream: str
    entry_id: str
    consumer: str
    deliveries: int = 1

    @property
    def task_id(self) -> int:
        return self.message.task_id

    def expired(self, now: float | None = None) -> bool:
        expires = self.message.expires_at
        return expires is not None and (now or time.time()) > expires


@dataclass(frozen=True)
class Depth:
    waiting: int  # in the stream, not yet claimed
    pending: int  # claimed by a consumer, not yet acked
    delayed: int  # waiting for their retry time
    dead: int  # gave up after the last attempt

    @property
    def work(self) -> int:
        """What the pool has to do: waiting, in hand and coming back for a retry."""
        return self.waiting + self.pending + self.delayed


@dataclass(frozen=True)
class RetryDecision:
    dead: bool
    delay_s: float = 0.0
    attempt: int = 0


class Queue:
    def __init__(
        self,
        redis: Redis,
        name: str,
        *,
        lease_s: float = 60.0,
        max_attempts: int = 3,
        backoff_s: float = 5.0,
        backoff_max_s: float = 600.0,
        ttl_s: float | None = None,
        prefix: str = "fixfleet",
    ) -> None:
        if name not in QUEUES:
            raise ValueError(f"unknown queue {name!r}; queues are {', '.join(QUEUES)}")
        self.redis, self.name = redis, name
        self.lease_s, self.max_attempts = lease_s, max_attempts
        self.backoff_s, self.backoff_max_s, self.ttl_s = backoff_s, backoff_max_s, ttl_s
        self.streams = [f"{prefix}:{name}:{p.value}" for p in Priority]
        self.delayed_key = f"{prefix}:{name}:delayed"
        self.dead_key = f"{prefix}:{name}:dead"
        self._claim_next = redis.register_script(_CLAIM_NEXT)
        self._if_owner = redis.register_script(_IF_OWNER)
        self._add = redis.register_script(_ADD)
        self._release = redis.register_script(_RELEASE)
        self._claim_keys = [k.encode() for k in (self.delayed_key, *self.streams)]  # bytes: sent as they are
        self._lease_ms = int(lease_s * 1000)
        self._groups_ready = False
        self._next_reclaim = 0.0
        self._lines: dict[str, Line] = {}  # consumer -> its own connection for claims

    async def ensure_groups(self) -> None:
        """Create the consumer group on every stream (idempotent; also after a FLUSHALL)."""
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except Exception as exc:  # BUSYGROUP: it exists already
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_ready = True

    # --- producing ----------------------------------------------------------------------------

    def message(self, task_id: int, priority: Priority | str, attempt: int = 1, version: int | None = None,
                action: str = WORK) -> QueuedTask:
        now = time.time()
        return QueuedTask(
            task_id=task_id,
            queue=self.name,
            priority=Priority(priority),
            attempt=attempt,
            version=version,
            action=action,
            enqueued_at=now,
            expires_at=now + self.ttl_s if self.ttl_s else None,
        )

    async def enqueue(self, task_id: int, priority: Priority | str = Priority.NORMAL, version: int | None = None,
                      action: str = WORK) -> str:
        return (await self.enqueue_many([(task_id, priority, version, action)]))[0]

    async def enqueue_many(self, items: list[tuple[Any, ...]]) -> list[str]:
        """Add entries: (task id, priority[, the task's version it is queued at[, action]])."""
        if not self._groups_ready:
            await self.ensure_groups()
        jobs = [self.message(*item[:2], version=item[2] if len(item) > 2 else None,
                             action=item[3] if len(item) > 3 else WORK).model_dump_json() for item in items]
        return [_text(entry_id) for entry_id in await self._add(keys=self.streams, args=jobs)]

    # --- consuming ----------------------------------------------------------------------------

    async def dequeue(self, consumer: str, *, block_s: float = 1.0) -> Job | None:
        """The next job for this consumer, highest priority first; None after `block_s` idle."""
        if not self._groups_ready:
            await self.ensure_groups()
        job, next_due_in = await self._claim(consumer)
        if job is not None or block_s <= 0:
            return job
        block_ms = self._block_ms(min(block_s, next_due_in))
        read = await self._line(consumer).call(
            "XREADGROUP", "GROUP", GROUP, consumer, "COUNT", 1, "BLOCK", block_ms, "STREAMS", *self.streams, *[">"] * len(self.streams)
        )
        return await self._take(consumer, read)

    def _line(self, consumer: str) -> Line:
        if (line := self._lines.get(consumer)) is None:
            line = self._lines[consumer] = Line(self.redis)
        return line

    def _block_ms(self, block_s: float) -> int:
        return max(1, int(min(block_s, self.lease_s / 2) * 1000))

    async def _claim(self, consumer: str) -> tuple[Job | None, float]:
        """A job, or None and the seconds until the next delayed retry is due."""
        try:
            found = await self._line(consumer).evalsha(
                self._claim_next.sha,
                self._claim_next.script,
                self._claim_keys,
                [GROUP, consumer, repr(time.time()), self._lease_ms, self._reclaim_due()],
            )
        except Exception as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_groups()  # Redis lost its data: recreate and try once more
            return await self._claim(consumer)
        rank = int(found[0])
        if rank == 0:
            due = _text(found[1])
            return None, max(0.0, float(due) - time.time()) if due else float("inf")
        _, entry_id, payload, deliveries = found
        return self._job(self.streams[rank - 1], entry_id, payload, consumer, int(deliveries)), 0.0

    async def _take(self, consumer: str, read: object) -> Job | None:
        """The job from a blocking read over all priorities (its raw reply: a list of
        [stream, entries] pairs, or a map under RESP3). Several may come back (a race between
        our scan and the block): keep the highest, put the others back in line."""
        if not read:
            return (await self._claim(consumer))[0]
        pairs = read.items() if isinstance(read, dict) else read
        by_stream = {_text(stream): _job_field(entries[0]) for stream, entries in pairs}
        ordered = [s for s in self.streams if s in by_stream]
        keep, rest = ordered[0], ordered[1:]
        for stream in rest:
            entry_id, payload = by_stream[stream]
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(stream, {"job": payload})
                pipe.xack(stream, GROUP, entry_id)
                pipe.xdel(stream, entry_id)
                await pipe.execute()
        entry_id, payload = by_stream[keep]
        return self._job(keep, entry_id, payload, consumer, 1)

    def _job(self, stream: str, entry_id: object, payload: object, consumer: str, deliveries: int) -> Job:
        message = QueuedTask.model_validate_json(_text(payload))
        return Job(message=message, stream=stream, entry_id=_text(entry_id), consumer=consumer, deliveries=deliveries)

    def _reclaim_due(self) -> str:
        """Expired claims are looked for a few times per lease (at least every RECLAIM_EVERY_S:
        a claim released because its holder is gone is taken over that soon), not on every
        claim: that scan is the costly part of a claim under load."""
        now = time.monotonic()
        if now < self._next_reclaim:
            return "0"
        self._next_reclaim = now + min(self.lease_s / 4, RECLAIM_EVERY_S)
        return "1"

    async def heartbeat(self, job: Job) -> None:
        """Renew the claim: resets its idle time so no other consumer takes it over."""
        if not await self._if_owner(keys=[job.stream], args=[GROUP, job.entry_id, job.consumer, "renew"]):
            raise LeaseLost(f"task {job.task_id}: entry {job.entry_id} is no longer held by {job.consumer}")

    async def ack(self, job: Job) -> bool:
        """Finish the job. False when the claim had been taken over (the new holder finishes)."""
        return bool(await self._if_owner(keys=[job.stream], args=[GROUP, job.entry_id, job.consumer, "ack"]))

    async def retry(self, job: Job, error: str) -> RetryDecision:
        """Schedule another attempt after an exponential backoff, or dead-letter after the last."""
        if job.message.attempt >= self.max_attempts:
            await self.dead_letter(job, error)
            return RetryDecision(dead=True, attempt=job.message.attempt)
        delay = min(self.backoff_s * 2 ** (job.message.attempt - 1), self.backoff_max_s)
        message = job.message.model_copy(update={"attempt": job.message.attempt + 1})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.delayed_key, {message.model_dump_json(): time.time() + delay})
            pipe.xack(job.stream, GROUP, job.entry_id)
            pipe.xdel(job.stream, job.entry_id)
            await pipe.execute()
        return RetryDecision(dead=False, delay_s=delay, attempt=message.attempt)

    async def dead_letter(self, job: Job, reason: str) -> None:
        record = {"job": job.message.model_dump_json(), "reason": reason[:4000], "failed_at": str(time.time())}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_key, record, maxlen=DEAD_LETTERS_KEPT, approximate=True)
            pipe.xack(job.stream, GROUP, job.entry_id)
            pipe.xdel(job.stream, job.entry_id)
            await pipe.execute()

    async def release(self, consumer: str) -> int:
        """Hand every claim `consumer` holds to the next consumer that asks (its holder is gone);
        returns how many. The takeover is the usual one after a lease: a redelivery."""
        if not self._groups_ready:
            await self.ensure_groups()
        idle_ms = self._lease_ms + 1000
        return sum([int(await self._release(keys=[stream], args=[GROUP, consumer, idle_ms])) for stream in self.streams])

    # --- inspecting ---------------------------------------------------------------------------

    async def holders(self) -> dict[str, int]:
        """Consumer -> how many entries it holds (claimed, not yet acked), over all priorities."""
        counts: dict[str, int] = {}
        for stream in self.streams:
            try:
                summary = await self.redis.xpending(stream, GROUP)
            except Exception as exc:  # NOGROUP: Redis lost the stream; nobody holds anything there
                if "NOGROUP" not in str(exc):
                    raise
                continue
            for consumer in summary.get("consumers") or []:
                name = _text(consumer["name"])
                counts[name] = counts.get(name, 0) + int(consumer["pending"])
        return counts

    async def depth(self) -> Depth:
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in self.streams:
                pipe.xlen(stream)
            for stream in self.streams:
                pipe.xpending(stream, GROUP)
            pipe.zcard(self.delayed_key)
            pipe.xlen(self.dead_key)
            results = await pipe.execute(raise_on_error=False)
        n = len(self.streams)
        length = sum(_int(r) for r in results[:n])
        pending = sum(r["pending"] if isinstance(r, dict) else 0 for r in results[n : 2 * n])
        return Depth(waiting=length - pending, pending=pending, delayed=_int(results[-2]), dead=_int(results[-1]))

    async def entries(self) -> set[tuple[int, str]]:
        """(task id, action) of every entry here: waiting, claimed or delayed (for the reconciler)."""
        jobs = [_text(fields[b"job"]) for stream in self.streams for _, fields in await self.redis.xrange(stream)]
        jobs += [_text(member) for member in await self.redis.zrange(self.delayed_key, 0, -1)]
        return {(job.task_id, job.action) for job in map(QueuedTask.model_validate_json, jobs)}


def _job_field(entry: list) -> tuple[bytes, bytes]:
    """(entry id, job json) of a raw stream entry: [id, [field, value, ...]]."""
    entry_id, fields = entry
    return entry_id, fields[fields.index(b"job") + 1]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0
