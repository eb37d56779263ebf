"""Worker pools: one RQ queue per pool, fed by a dispatcher that serves priorities by weight and owners in turn.

A kind's async jobs run on its pool (KindSettings.pool; `jobs` unless staff route it to another of RQ_POOLS).
A job queued on a pool is not pushed onto the pool's RQ queue at once: it is *staged* in Redis under its
priority and owner, and the dispatcher (one Lua script) moves staged jobs onto the RQ queue, which RQ workers
pop as ever, while it holds fewer than READY_DEPTH. The dispatcher runs when a job is staged and every time a
worker looks for work (PoolQueue.dequeue_any: before it waits, and after it took a job), so the RQ queue stays
topped up while jobs wait, and what it holds is decided as late as possible.

The rule, per pool (docs/architecture.md states it for users):
- **Priorities**: smooth weighted round-robin over the priorities with jobs staged, PRIORITY_WEIGHTS (high 4,
  normal 2, low 1): while all three wait, every 7 dispatches give high 4, normal 2 and low 1, and low never
  waits more than 7 dispatches for its turn. A priority with nothing staged gives up its turns. (RQ's own way,
  a worker listening on `cpu-high cpu-normal cpu-low` in order, is strict priority: low starves.)
- **Owners** (QUEUE_FAIRNESS): within one priority, round-robin over the owners with jobs staged, one job per
  turn. A job of a user with nothing else waiting is dispatched after at most one job of each other owner
  staged at its priority, whatever their backlogs: one user's 10 000 jobs hold it back by one job, not 10 000.

Written by hand: RQ has no fair or weighted dequeue (its workers pop their queues in order), and the fair
queues of other libraries need their own workers; this keeps RQ's workers, registries and dashboard.

Crash safety: every step is one atomic script; a staged job's RQ job exists (status queued) and its lane holds
its id, so the reconciler counts it as pending (jobs.queues.pending_in_rq); a job lost with Redis is enqueued again by the reconciler from the database.
Retries that RQ's scheduler brings back skip the stages (straight onto the RQ queue): they waited already.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django_rq.queues import DjangoRQ
from redis import Redis
from rq.job import Job as RQJob
from rq.queue import Queue

from accounts.models import Priority
from jobsite.redis import redis_key, run_lua

POOL_KEY_PREFIX = redis_key("pool")
"""Every key of the stages: {prefix}:{pool}:{priority}:owners | :owner:{owner} | :staged, and {prefix}:{pool}:turns."""

PRIORITIES = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
"""Dispatch order among equal turns: higher first."""

READY_DEPTH = 1
"""Jobs the dispatcher keeps on a pool's RQ queue: one, so a worker never waits on a dispatch, and a job
that arrives later (higher priority, another owner) is at most one dispatched job behind the rule."""

SHARED_OWNER = "*"
"""The one owner every job is staged under when QUEUE_FAIRNESS is off: first come, first served."""

ROOM_SIGNALS_MAX = 16
"""Wake-ups a pool's room list keeps: with nobody waiting they pile up to this many, and the first waiters of the
next burst spend one depth read on each stale one."""

ROOM_SIGNALS_TTL_MS = 60_000
"""The room list goes when no worker of the pool has taken a job for this long."""


def _key(pool: str, *parts: object) -> str:
    return ":".join((POOL_KEY_PREFIX, pool, *(str(part) for part in parts)))


def _owners_key(pool: str, priority: str) -> str:
    return _key(pool, priority, "owners")


def _owner_prefix(pool: str, priority: str) -> str:
    return _key(pool, priority, "owner", "")


def _staged_key(pool: str, priority: str) -> str:
    return _key(pool, priority, "staged")


def _turns_key(pool: str) -> str:
    return _key(pool, "turns")


def room_key(pool: str) -> str:
    """The pool's room list: a worker that takes a job pushes a wake-up there for an acknowledgement waiting for room
    (jobs.queues.queue_wait_for_room blocks on it)."""
    return _key(pool, "room")


STAGE_LUA = """
-- Stage one job under its owner at its priority, then count it.
-- KEYS[1] the owner's list of staged job ids, KEYS[2] the ring of owners with jobs staged at this priority,
-- KEYS[3] the staged counter of this priority. ARGV[1] the RQ job id, ARGV[2] the owner.
-- An owner is in the ring exactly while its list is not empty. Returns the jobs staged at this priority.
if redis.call('RPUSH', KEYS[1], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
end
return redis.call('INCR', KEYS[3])
"""

DISPATCH_LUA = """
-- Move staged jobs onto the pool's RQ queue while it holds fewer than ARGV[1]: priorities by smooth weighted
-- round-robin, owners within a priority in turn (the ring: take the first, put it back last if it has more).
-- KEYS[1] the RQ queue (list), KEYS[2] the turns hash (current weight of each priority),
-- KEYS[2+p] the owners ring of priority p, KEYS[2+n+p] its staged counter, for p = 1..n.
-- ARGV[1] ready depth, ARGV[2] n, ARGV[2+p] the name of priority p, ARGV[2+n+p] its weight,
-- ARGV[2+2n+p] its owner-list key prefix (the owner is appended: one Redis, no cluster).
-- After a worker took a job, also KEYS[3+2n] the pool's room list, ARGV[3+3n] the wake-ups it keeps at most,
-- ARGV[4+3n] its TTL in ms: one wake-up is pushed for an acknowledgement waiting for room.
-- Returns the number of jobs moved.
local depth, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local moved = 0
local room = KEYS[3 + 2 * n]
if room then
  redis.call('RPUSH', room, 1)
  redis.call('LTRIM', room, -tonumber(ARGV[3 + 3 * n]), -1)
  redis.call('PEXPIRE', room, ARGV[4 + 3 * n])
end
while redis.call('LLEN', KEYS[1]) < depth do
  local best, best_turn, total, turns = nil, nil, 0, {}
  for p = 1, n do
    if redis.call('LLEN', KEYS[2 + p]) > 0 then
      local weight = tonumber(ARGV[2 + n + p])
      local turn = tonumber(redis.call('HGET', KEYS[2], ARGV[2 + p]) or '0') + weight
      turns[p], total = turn, total + weight
      if best == nil or turn > best_turn then best, best_turn = p, turn end
    else
      redis.call('HDEL', KEYS[2], ARGV[2 + p])  -- a priority back from empty starts afresh
    end
  end
  if best == nil then break end
  for p, turn in pairs(turns) do
    redis.call('HSET', KEYS[2], ARGV[2 + p], p == best and turn - total or turn)
  end
  local owner = redis.call('LPOP', KEYS[2 + best])
  local owner_list = ARGV[2 + 2 * n + best] .. owner
  local job_id = redis.call('LPOP', owner_list)
  if redis.call('LLEN', owner_list) > 0 then redis.call('RPUSH', KEYS[2 + best], owner) end
  if job_id then
    redis.call('DECR', KEYS[2 + n + best])
    redis.call('RPUSH', KEYS[1], job_id)
    moved = moved + 1
  end
end
return moved
"""

DISCARD_LUA = """
-- Take one job out of its stage (canceled). KEYS[1] the owner's list, KEYS[2] the owners ring of its priority,
-- KEYS[3] the staged counter. ARGV[1] the RQ job id, ARGV[2] the owner. Returns 1 if it was staged, else 0.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if redis.call('LLEN', KEYS[1]) == 0 then redis.call('LREM', KEYS[2], 1, ARGV[2]) end
redis.call('DECR', KEYS[3])
return 1
"""


@dataclass(frozen=True)
class Lane:
    """Where in a pool a job is staged: its priority and owner (the shared owner when fairness is off)."""

    priority: str
    owner: str

    @classmethod
    def of(cls, *, priority: str, owner_id: int | str) -> "Lane":
        return cls(priority=priority, owner=str(owner_id) if settings.QUEUE_FAIRNESS else SHARED_OWNER)

    def keys(self, pool: str) -> list[str]:
        return [
            _owner_prefix(pool, self.priority) + self.owner,
            _owners_key(pool, self.priority),
            _staged_key(pool, self.priority),
        ]


def is_pool(name: str) -> bool:
    return name in settings.JOB_POOLS


def _dispatch_call(queue: Queue, *, took_job: bool = False) -> tuple[list[str], list[Any]]:
    """DISPATCH_LUA's KEYS and ARGV for a pool (`took_job`: a worker just took one, so a waiter is woken)."""
    pool = queue.name
    keys = [queue.key, _turns_key(pool)]
    keys += [_owners_key(pool, priority) for priority in PRIORITIES]
    keys += _staged_keys(pool)
    args: list[Any] = [READY_DEPTH, len(PRIORITIES), *PRIORITIES]
    args += [settings.PRIORITY_WEIGHTS[priority] for priority in PRIORITIES]
    args += [_owner_prefix(pool, priority) for priority in PRIORITIES]
    if took_job:
        keys.append(room_key(pool))
        args += [ROOM_SIGNALS_MAX, ROOM_SIGNALS_TTL_MS]
    return keys, args


def pool_dispatch(queue: Queue, *, took_job: bool = False) -> int:
    """Top up a pool's RQ queue from its stages by the rule; returns how many jobs it moved. `took_job`: a worker
    just took one off the queue, so one acknowledgement waiting for room is woken in the same call."""
    keys, args = _dispatch_call(queue, took_job=took_job)
    return int(run_lua(DISPATCH_LUA, keys=keys, args=args, client=queue.connection))  # type: ignore[call-overload]


def _staged_keys(pool: str) -> list[str]:
    return [_staged_key(pool, priority) for priority in PRIORITIES]


def _staged_counts(raw: list[Any]) -> dict[str, int]:
    """The staged counters as read (MGET: None for a key never written), per priority."""
    return {priority: max(0, int(value or 0)) for priority, value in zip(PRIORITIES, raw, strict=True)}


def pool_staged(connection: Redis, pool: str) -> dict[str, int]:
    """Jobs staged in a pool, per priority (one round trip)."""
    return _staged_counts(connection.mget(_staged_keys(pool)))


class PoolQueue(DjangoRQ):
    """An RQ queue that, for a pool, stages the jobs pushed through a lane and dispatches them by the rule.

    Any other queue (callbacks, maintenance), and a push without a lane (RQ's scheduler bringing a retry
    back), behaves as RQ's own. Workers of any class use its dequeue_any (django-rq passes the queues' class).
    """

    def __init__(self, *args: Any, lane: Lane | None = None, **kwargs: Any) -> None:
        self.lane = lane
        super().__init__(*args, **kwargs)

    def push_job_id(self, job_id: str, pipeline: Any = None, at_front: bool = False) -> None:
        if self.lane is None or at_front or not is_pool(self.name):
            super().push_job_id(job_id, pipeline=pipeline, at_front=at_front)
            return
        client = pipeline if pipeline is not None else self.connection
        run_lua(STAGE_LUA, keys=self.lane.keys(self.name), args=[job_id, self.lane.owner], client=client)
        keys, args = _dispatch_call(self)
        run_lua(DISPATCH_LUA, keys=keys, args=args, client=client)  # same transaction: an idle worker gets it now

    def discard(self, job_id: str) -> None:
        """Take a job out of its stage (its lane's) or off the RQ queue."""
        assert self.lane is not None
        if not is_pool(self.name) or not run_lua(
            DISCARD_LUA, keys=self.lane.keys(self.name), args=[job_id, self.lane.owner], client=self.connection
        ):
            self.remove(job_id)

    @property
    def count(self) -> int:
        """Jobs waiting: on the RQ queue and, for a pool, staged (the dashboard, back-pressure and /healthz).

        One round trip either way."""
        if not is_pool(self.name):
            return super().count
        with self.connection.pipeline(transaction=False) as pipeline:
            pipeline.llen(self.key)
            pipeline.mget(_staged_keys(self.name))
            ready, staged = pipeline.execute()
        return int(ready) + sum(_staged_counts(staged).values())

    @classmethod
    def dequeue_any(
        cls,
        queues: Iterable[Queue],
        timeout: int | None,
        connection: Redis,
        job_class: type[RQJob] | None = None,
        serializer: Any = None,
        death_penalty_class: Any = None,
    ) -> tuple[RQJob, Queue] | None:
        queues = list(queues)
        for queue in queues:
            if is_pool(queue.name):
                pool_dispatch(queue)
        result = super().dequeue_any(
            queues,
            timeout,
            connection=connection,
            job_class=job_class,
            serializer=serializer,
            death_penalty_class=death_penalty_class,
        )
        if result is not None and is_pool(result[1].name):
            pool_dispatch(result[1], took_job=True)  # the next job is ready before this one ends: no worker waits
        return result
