"""The node's one prioritized task pool: paid work first, in proportion to price; free work ages.

Every forward, backward and inference step a node computes goes through `TaskPool.submit`,
which returns a `concurrent.futures.Future` (await it from asyncio with
`asyncio.wrap_future`). The pool's worker thread(s) run one task at a time, always the one
with the smallest *tag*.

*Preemptible between steps.* A task function may return a generator (a task in steps, see
node/task_queue.py; the block server yields after every block). After each step the
worker looks at the queue: if a task with a smaller tag has arrived meanwhile, the running
task goes back into the queue with its tag unchanged and the worker runs the other one
first. So a paid inference step waits for at most one block of the free forward that was
running when it arrived, not for the whole forward; the interrupted task resumes where it
stopped, and its result is the same as if it had run in one go.

Tags are virtual deadlines in seconds on the monotonic clock (VirtualClock scheduling,
Zhang 1990). A *flow* is one client (its key) in one class (paid or free). For a task of
flow f arriving at time t:

    rate    = free_tokens_per_s                                   (free task)
            = free_tokens_per_s * paid_weight * price_per_token   (paid task)
    cost    = tokens * (1 if kind is inference else bulk_factor)
    start   = max(t, min(last_tag[f], t + max_lead_s))
    tag     = start + min(cost / rate, max_slack_s);   last_tag[f] = tag

What this gives, and why:

- *Paid before free.* With the defaults a free inference step's tag is 50 ms after it
  arrives, a paid one at price 1 is 0.5 ms after: a paid step overtakes every free task
  that has not already waited ~50 ms.
- *In proportion to what they pay.* Backlogged paid flows advance their tags by
  cost / (price * ...), so under contention each is served tokens in proportion to its
  price per token (two clients paying 3 and 1 get 3:1 of the node).
- *Inference before bulk of the same class.* Forward/backward tokens cost `bulk_factor`
  times more virtual time, and a bulk call carries many tokens, so a single inference
  step of the same class sorts ahead of it.
- *Free work ages and never starves.* A tag never changes once given (not even when its
  task is preempted), while every task arriving later gets a tag >= its arrival time. A
  free task that has waited past its tag therefore beats every newly arriving task, paid
  or not, and is no longer preempted by them. Every tag is at most
  arrival + max_lead_s + max_slack_s (3 s by default), so a task waits at most that long
  plus the work of tasks tagged before it, which all arrived before its deadline.
  `max_lead_s` caps how far a greedy flow's tags run ahead of real time (a client that
  used an idle node is not punished without bound later); `max_slack_s` keeps a huge
  bulk call from being pushed arbitrarily far back.

*A lone session's short decode steps skip the worker.* An inference step of at most
`inline_max_tokens` tokens, from the node's only open session, that finds nothing queued
and nothing running is computed on the caller's thread (the node's event loop), which
saves two thread hand-offs per step (about 0.5 ms per hop on the 2-core benchmark
machine). Its tag and counters are booked as for any task, and the workers start nothing
until it is done; a forward call or challenge that arrives meanwhile waits for that one
step. With several sessions open, every step goes through the queue: the event loop
reads requests one at a time, so inline steps would be served in arrival order and a
paid step could wait behind a run of free ones.

Within a class this is fair queueing between clients: a free client sending an occasional
step overtakes free clients hammering the node, whose tags run up to `max_lead_s` ahead.

Bounded: at most `max_pending` queued tasks; the last `paid_reserve` slots admit only
paid tasks, so a flood of free requests cannot lock paying clients out. A full pool
raises `PoolFullError` at submit (a BUSY error for the client, which re-routes).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from node.task_queue import TaskInfo, run_steps
from protocol.messages import ErrorCode, WireError
from protocol.receipts import Kind

logger = logging.getLogger(__name__)


class PoolFullError(WireError):
    """The pool holds `max_pending` tasks already. A WireError with code BUSY, so the block
    server's handler answers "busy" and the client re-routes, with no special case."""

    def __init__(self, message: str):
        super().__init__(ErrorCode.BUSY, message)


class PoolClosedError(RuntimeError):
    """The pool was shut down; queued tasks fail with this instead of running."""


@dataclass(frozen=True)
class Priority:
    """What the scheduler needs to know about one task.

    `price_per_token` is in credits per token (the ticket's price); a task with `paid`
    False or a zero price is free. `client` names the flow (normally the client's public
    key); tasks of one client share one flow so a client cannot gain by splitting work.
    """

    paid: bool = False
    price_per_token: float = 0.0
    kind: Kind = Kind.INFERENCE
    tokens: int = 1
    client: bytes = b""

    def __post_init__(self) -> None:
        if self.price_per_token < 0:
            raise ValueError("price_per_token must be >= 0")
        if self.tokens < 0:
            raise ValueError("tokens must be >= 0")
        object.__setattr__(self, "kind", Kind(self.kind))

    @property
    def is_paid(self) -> bool:
        return self.paid and self.price_per_token > 0


FREE = Priority()


@dataclass(frozen=True)
class PoolConfig:
    """Scheduling knobs; the defaults suit one node on one machine (see module docstring)."""

    free_tokens_per_s: float = 20.0  # a free inference step's slack is 1/20 s
    paid_weight: float = 100.0  # a paid token at price 1 weighs as much as 100 free tokens
    bulk_factor: float = 4.0  # forward/backward tokens cost this much more virtual time
    max_lead_s: float = 1.0  # how far a flow's tags may run ahead of real time
    max_slack_s: float = 2.0  # no task's deadline is further than this past its start
    max_pending: int = 1024
    paid_reserve: int = 64
    workers: int = 1
    inline_max_tokens: int = 16  # idle pool, lone session: steps up to this size run on the caller's thread (0: never)

    def __post_init__(self) -> None:
        if self.free_tokens_per_s <= 0 or self.paid_weight <= 0 or self.bulk_factor <= 0:
            raise ValueError("rates and factors must be positive")
        if self.max_lead_s < 0 or self.max_slack_s <= 0 or self.workers < 1:
            raise ValueError("max_lead_s must be >= 0, max_slack_s > 0 and workers >= 1")
        if not 0 <= self.paid_reserve < self.max_pending:
            raise ValueError("paid_reserve must be in [0, max_pending)")


@dataclass(order=True)
class _Entry:
    tag: float
    seq: int
    fn: Callable[[], Any] = field(compare=False)
    future: Future[Any] = field(compare=False)
    priority: Priority = field(compare=False)
    enqueued: float = field(compare=False)
    steps: Generator[Any, None, Any] | None = field(default=None, compare=False)  # once started, if in steps


@dataclass
class PoolStats:
    """Counters for logs, the DHT announcement and tests."""

    served_paid: int = 0
    served_free: int = 0
    rejected_full: int = 0
    preempted: int = 0  # times a task in steps went back to the queue for a more urgent one
    max_wait_free_s: float = 0.0
    max_wait_paid_s: float = 0.0


class TaskPool:
    """A bounded, thread-safe priority pool with its own worker thread(s)."""

    def __init__(self, config: PoolConfig | None = None, *, name: str = "task-pool",
                 clock: Callable[[], float] = time.monotonic):
        self.config = config or PoolConfig()
        self.stats = PoolStats()
        self._clock = clock
        self._heap: list[_Entry] = []
        self._last_tag: dict[tuple[bool, bytes], float] = {}
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._running = 0  # tasks being computed, by a worker or inline
        self._inline = False  # a caller's thread holds the pool (inline_slot)
        self._workers = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
            for i in range(self.config.workers)
        ]
        for worker in self._workers:
            worker.start()

    # ----- submitting --------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], *args: Any, priority: Priority = FREE,
               **kwargs: Any) -> Future[Any]:
        """Queue `fn(*args, **kwargs)`; the future resolves with its result or exception."""
        future: Future[Any] = Future()
        with self._cond:
            if self._closed:
                raise PoolClosedError("task pool is shut down")
            limit = self.config.max_pending - (0 if priority.is_paid else self.config.paid_reserve)
            if len(self._heap) >= limit:
                self.stats.rejected_full += 1
                raise PoolFullError(f"node busy: {len(self._heap)} tasks queued, retry later")
            now = self._clock()
            entry = _Entry(self.tag_for(priority, now), next(self._seq),
                           (lambda: fn(*args, **kwargs)), future, priority, now)
            heapq.heappush(self._heap, entry)
            self._cond.notify()
        return future

    def tag_for(self, priority: Priority, now: float) -> float:
        """Assign the task's virtual deadline (the formula in the module docstring).

        Must be called with the lock held: it advances the flow's last tag.
        """
        cfg = self.config
        rate = cfg.free_tokens_per_s
        if priority.is_paid:
            rate *= cfg.paid_weight * priority.price_per_token
        factor = 1.0 if priority.kind == Kind.INFERENCE else cfg.bulk_factor
        cost = max(priority.tokens, 1) * factor
        flow = (priority.is_paid, priority.client)
        start = max(now, min(self._last_tag.get(flow, now), now + cfg.max_lead_s))
        tag = start + min(cost / rate, cfg.max_slack_s)
        self._last_tag[flow] = tag
        if len(self._last_tag) > 4 * cfg.max_pending:
            self._forget_idle_flows(now)
        return tag

    def _forget_idle_flows(self, now: float) -> None:
        """Drop flows whose last tag is in the past: they would restart at `now` anyway."""
        self._last_tag = {flow: tag for flow, tag in self._last_tag.items() if tag > now}

    @contextlib.contextmanager
    def inline_slot(self, priority: Priority) -> Iterator[bool]:
        """Hold the pool for one short task the caller computes on its own thread: yields
        True (tag and counters booked, workers held back until the block exits) when nothing
        is queued or running, else False and the caller submits as usual."""
        with self._cond:
            granted = not (self._closed or self._heap or self._running)
            if granted:
                now = self._clock()
                self.tag_for(priority, now)
                self._account(priority, now)
                self._running += 1
                self._inline = True
        try:
            yield granted
        finally:
            if granted:
                with self._cond:
                    self._running -= 1
                    self._inline = False
                    if self._heap:  # a task queued meanwhile (from another thread); else let workers sleep
                        self._cond.notify()

    # ----- running -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while (not self._heap or self._inline) and not self._closed:
                    self._cond.wait()
                if not self._heap:
                    return  # closed and drained
                entry = heapq.heappop(self._heap)
                if entry.steps is None:
                    self._account(entry.priority, entry.enqueued)
                self._running += 1
            try:
                if entry.steps is None and not entry.future.set_running_or_notify_cancel():
                    continue
                self._advance(entry)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller via the future
                entry.future.set_exception(exc)
            finally:
                with self._cond:
                    self._running -= 1

    def _advance(self, entry: _Entry) -> None:
        """Run the task until it finishes (result set) or a more urgent task is queued."""
        if entry.steps is None:
            result = entry.fn()
            if not isinstance(result, Generator):
                entry.future.set_result(result)
                return
            entry.steps = result
        while True:
            try:
                next(entry.steps)
            except StopIteration as done:
                entry.future.set_result(done.value)
                return
            with self._cond:
                if self._heap and self._heap[0] < entry:
                    heapq.heappush(self._heap, entry)  # same tag and seq: it resumes in its turn
                    self.stats.preempted += 1
                    self._cond.notify()
                    return

    def _account(self, priority: Priority, enqueued: float) -> None:
        waited = self._clock() - enqueued
        if priority.is_paid:
            self.stats.served_paid += 1
            self.stats.max_wait_paid_s = max(self.stats.max_wait_paid_s, waited)
        else:
            self.stats.served_free += 1
            self.stats.max_wait_free_s = max(self.stats.max_wait_free_s, waited)

    # ----- inspection and shutdown -------------------------------------------------------

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def shutdown(self, *, wait: bool = True, cancel_pending: bool = True,
                 timeout: float | None = None) -> None:
        """Stop accepting work; fail queued tasks (or let them run) and join the workers.

        With `cancel_pending` queued futures fail with PoolClosedError, so every awaiting
        handler gets an answer (a task preempted part-way too: its generator is closed);
        the task being computed always finishes.
        """
        with self._cond:
            self._closed = True
            dropped = self._heap if cancel_pending else []
            if cancel_pending:
                self._heap = []
            self._cond.notify_all()
        if dropped:
            logger.info("task pool shut down with %d queued tasks; their requests get an error", len(dropped))
        for entry in dropped:
            if entry.steps is not None:  # started, then preempted: stop it where it is
                entry.steps.close()
                entry.future.set_exception(PoolClosedError("node is shutting down"))
            elif entry.future.set_running_or_notify_cancel():
                entry.future.set_exception(PoolClosedError("node is shutting down"))
        if wait:
            for worker in self._workers:
                if worker is not threading.current_thread():
                    worker.join(timeout)

    def __enter__(self) -> TaskPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


_KINDS = {"inference": Kind.INFERENCE, "forward": Kind.FORWARD, "backward": Kind.BACKWARD}


def priority_from_info(info: TaskInfo) -> Priority:
    """The block server's TaskInfo as a Priority: `info.priority` is the price per token
    the node's ticket check granted (0 = free). Challenge openings ("open") count as bulk."""
    return Priority(
        paid=info.priority > 0,
        price_per_token=float(max(info.priority, 0)),
        kind=_KINDS.get(info.kind, Kind.FORWARD),
        tokens=max(int(info.tokens), 1),
        client=info.client_key,
    )


class PriorityTaskQueue:
    """Drop-in replacement for node.task_queue.TaskQueue backed by a TaskPool."""

    def __init__(self, config: PoolConfig | None = None):
        self.pool = TaskPool(config, name="corolla-compute")

    async def submit(self, info: TaskInfo, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on the compute thread in priority order; PoolFullError when full.

        If `fn` returns a generator, it runs one step at a time and a more urgent task may
        run between two steps. If the awaiting coroutine is cancelled before the task
        starts, it never runs. A short step of a lone session on an idle pool runs right
        here, on the event loop's thread (`TaskPool.inline_slot`).
        """
        priority = priority_from_info(info)
        if info.sole_session and priority.kind == Kind.INFERENCE and priority.tokens <= self.pool.config.inline_max_tokens:
            with self.pool.inline_slot(priority) as granted:
                if granted:
                    return run_steps(fn(*args))
        return await asyncio.wrap_future(self.pool.submit(fn, *args, priority=priority))

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False)
