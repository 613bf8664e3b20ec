"""TaskPool: paid first and in proportion to price, inference before bulk, free work ages.

Real worker threads; ordering is made deterministic by holding the worker on a gate task
while the tasks under test are queued, then releasing it and reading the run order.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import wait

import pytest

from node.task_pool import (
    PoolClosedError,
    PoolConfig,
    PoolFullError,
    Priority,
    TaskPool,
)
from protocol.receipts import Kind


def paid(price: float, client: bytes = b"payer", kind: Kind = Kind.INFERENCE, tokens: int = 1) -> Priority:
    return Priority(paid=True, price_per_token=price, kind=kind, tokens=tokens, client=client)


def free(client: bytes = b"free", kind: Kind = Kind.INFERENCE, tokens: int = 1) -> Priority:
    return Priority(kind=kind, tokens=tokens, client=client)


class Gate:
    """Occupies the pool's worker until released, so queued tasks pile up meanwhile."""

    def __init__(self, pool: TaskPool):
        self.started, self.release = threading.Event(), threading.Event()
        self.future = pool.submit(self._hold, priority=paid(1000, b"gate"))
        assert self.started.wait(5)

    def _hold(self) -> None:
        self.started.set()
        assert self.release.wait(10)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pool():
    with TaskPool() as p:
        yield p


@pytest.fixture
def frozen_pool():
    """A pool whose clock stands still while tasks are queued: all arrive "at once", however
    slowly this (shared, loaded) machine submits them."""
    with TaskPool(clock=FakeClock()) as p:
        yield p


def run_gated(pool: TaskPool, jobs: list[tuple[str, Priority]]) -> list[str]:
    """Queue `jobs` behind a gate, release it, return the names in the order they ran."""
    order: list[str] = []
    gate = Gate(pool)
    futures = [pool.submit(order.append, name, priority=prio) for name, prio in jobs]
    gate.release.set()
    done, not_done = wait(futures, timeout=10)
    assert not not_done
    return order


def test_paid_task_runs_before_every_queued_free_task(frozen_pool):
    pool = frozen_pool
    jobs = [(f"free{i}", free(client=bytes([i]))) for i in range(20)] + [("paid", paid(1))]
    order = run_gated(pool, jobs)
    assert order[0] == "paid"
    assert sorted(order[1:]) == sorted(f"free{i}" for i in range(20))


def test_higher_price_runs_first_among_single_paid_tasks(frozen_pool):
    pool = frozen_pool
    order = run_gated(pool, [("cheap", paid(1, b"a")), ("dear", paid(5, b"b"))])
    assert order == ["dear", "cheap"]


def test_paid_clients_are_served_in_proportion_to_price(frozen_pool):
    pool = frozen_pool
    jobs = []
    for i in range(60):
        jobs += [(f"A{i}", paid(3, b"A")), (f"B{i}", paid(1, b"B"))]
    order = run_gated(pool, jobs)
    first = order[:40]
    served_a = sum(name.startswith("A") for name in first)
    assert 29 <= served_a <= 31, first  # 3:1 of the first 40 = 30:10
    # each flow keeps its own submission order
    assert [n for n in order if n.startswith("A")] == [f"A{i}" for i in range(60)]


def test_free_clients_share_equally(frozen_pool):
    pool = frozen_pool
    jobs = []
    for i in range(30):
        jobs += [(f"x{i}", free(b"x")), (f"y{i}", free(b"y")), (f"z{i}", free(b"z"))]
    # one client dumping more work does not push the others back
    jobs += [(f"x{i}", free(b"x")) for i in range(30, 90)]
    order = run_gated(pool, jobs)
    first = order[:60]
    assert sum(n.startswith("y") for n in first) == 20
    assert sum(n.startswith("z") for n in first) == 20


def test_inference_step_runs_before_bulk_of_the_same_class(frozen_pool):
    pool = frozen_pool
    order = run_gated(pool, [
        ("free-forward", free(b"f1", Kind.FORWARD, tokens=128)),
        ("free-backward", free(b"f2", Kind.BACKWARD, tokens=128)),
        ("free-step", free(b"f3", Kind.INFERENCE)),
        ("paid-forward", paid(1, b"p1", Kind.FORWARD, tokens=128)),
        ("paid-step", paid(1, b"p2", Kind.INFERENCE)),
    ])
    assert order.index("paid-step") < order.index("paid-forward")
    assert order.index("free-step") < order.index("free-forward")
    assert order.index("free-step") < order.index("free-backward")
    assert order.index("paid-forward") < order.index("free-forward")


def test_free_task_that_waited_past_its_deadline_beats_a_new_paid_task():
    clock = FakeClock()
    with TaskPool(clock=clock) as pool:
        order: list[str] = []
        gate = Gate(pool)
        old_free = pool.submit(order.append, "old-free", priority=free())
        clock.now += 0.2  # the free step's slack is 1/20 s: it is now overdue
        new_paid = pool.submit(order.append, "new-paid", priority=paid(1))
        gate.release.set()
        wait([old_free, new_paid], timeout=5)
        assert order == ["old-free", "new-paid"]


def test_every_tag_is_within_lead_plus_slack_of_arrival():
    clock = FakeClock()
    cfg = PoolConfig()
    with TaskPool(cfg, clock=clock) as pool:
        gate = Gate(pool)
        bound = clock.now + cfg.max_lead_s + cfg.max_slack_s
        with pool._cond:  # tag_for expects the lock; this is the formula under test
            tags = [pool.tag_for(free(b"greedy", Kind.FORWARD, tokens=4096), clock.now) for _ in range(50)]
        assert max(tags) <= bound + 1e-9
        gate.release.set()


def test_free_clients_make_progress_under_a_paid_flood():
    """A paying client keeps the worker saturated; free tasks still all finish, in bounded time."""
    cfg = PoolConfig(max_lead_s=0.05, max_slack_s=0.1)
    with TaskPool(cfg) as pool:
        stop = threading.Event()
        paid_done = [0]

        def paid_step() -> None:
            time.sleep(0.002)
            paid_done[0] += 1

        def flood() -> None:
            # keep ~8 paid tasks queued at all times (bounded: stops after 4 s regardless)
            deadline = time.monotonic() + 4
            inflight: list = []
            while not stop.is_set() and time.monotonic() < deadline:
                inflight = [f for f in inflight if not f.done()]
                while len(inflight) < 8:
                    inflight.append(pool.submit(paid_step, priority=paid(2)))
                time.sleep(0.001)

        flooder = threading.Thread(target=flood)
        flooder.start()
        time.sleep(0.1)
        started = time.monotonic()
        free_futures = [pool.submit(time.sleep, 0.002, priority=free(bytes([i]))) for i in range(10)]
        done, not_done = wait(free_futures, timeout=3)
        elapsed = time.monotonic() - started
        still_flooding = flooder.is_alive()
        stop.set()
        flooder.join()
    assert not not_done, "free tasks starved"
    assert still_flooding, "the paid flood ended before the free tasks finished"
    assert elapsed < 2.0
    assert paid_done[0] > 0  # the flood was being served meanwhile


def test_full_pool_refuses_free_work_but_keeps_a_reserve_for_paid():
    cfg = PoolConfig(max_pending=10, paid_reserve=3)
    with TaskPool(cfg) as pool:
        gate = Gate(pool)
        for _ in range(7):
            pool.submit(lambda: None, priority=free())
        with pytest.raises(PoolFullError):
            pool.submit(lambda: None, priority=free())
        for _ in range(3):
            pool.submit(lambda: None, priority=paid(1))
        with pytest.raises(PoolFullError):
            pool.submit(lambda: None, priority=paid(1))
        assert pool.stats.rejected_full == 2
        gate.release.set()


def test_task_exception_reaches_the_caller_and_the_worker_keeps_going(pool):
    def boom() -> None:
        raise ValueError("bad shape")

    with pytest.raises(ValueError, match="bad shape"):
        pool.submit(boom).result(5)
    assert pool.submit(lambda: 42).result(5) == 42


def test_shutdown_fails_queued_tasks_finishes_running_one_and_joins():
    pool = TaskPool()
    gate = Gate(pool)
    queued = [pool.submit(lambda: None) for _ in range(5)]
    threading.Timer(0.1, gate.release.set).start()
    pool.shutdown(wait=True, timeout=5)
    assert gate.future.result(1) is None  # the running task finished normally
    for f in queued:
        with pytest.raises(PoolClosedError):
            f.result(1)
    assert not any(w.is_alive() for w in pool._workers)
    with pytest.raises(PoolClosedError):
        pool.submit(lambda: None)


def test_shutdown_without_cancel_drains_the_queue():
    pool = TaskPool()
    gate = Gate(pool)
    queued = [pool.submit(lambda i=i: i) for i in range(5)]
    gate.release.set()
    pool.shutdown(wait=True, cancel_pending=False, timeout=5)
    assert [f.result(1) for f in queued] == list(range(5))


def test_priority_rejects_negative_values():
    with pytest.raises(ValueError):
        Priority(paid=True, price_per_token=-1)
    with pytest.raises(ValueError):
        Priority(tokens=-1)
    assert not Priority(paid=True, price_per_token=0).is_paid


def test_priority_task_queue_is_a_drop_in_for_the_fifo_seam():
    import asyncio

    from node.task_pool import PriorityTaskQueue
    from node.task_queue import TaskInfo

    async def scenario() -> list[str]:
        queue = PriorityTaskQueue()
        order: list[str] = []
        release = threading.Event()
        started = threading.Event()

        def hold() -> None:
            started.set()
            release.wait(5)

        gate = asyncio.ensure_future(queue.submit(TaskInfo("inference", 1, 1000, b"g"), hold))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        jobs = [
            queue.submit(TaskInfo("forward", 256, 0, b"f"), order.append, "free-forward"),
            queue.submit(TaskInfo("inference", 1, 0, b"i"), order.append, "free-step"),
            queue.submit(TaskInfo("open", 1, 0, b"o"), order.append, "free-open"),
            queue.submit(TaskInfo("inference", 1, 3, b"p"), order.append, "paid-step"),
        ]
        tasks = [asyncio.ensure_future(j) for j in jobs]
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(gate, *tasks)
        queue.shutdown()
        return order

    order = asyncio.run(scenario())
    assert order[:2] == ["paid-step", "free-step"]
    assert set(order[2:]) == {"free-forward", "free-open"}


def test_a_full_pool_is_a_busy_answer_for_the_client():
    from protocol.messages import ErrorCode, WireError

    with TaskPool(PoolConfig(max_pending=2, paid_reserve=1)) as pool:
        gate = Gate(pool)
        pool.submit(lambda: None)
        with pytest.raises(WireError) as err:
            pool.submit(lambda: None)
        assert err.value.code == ErrorCode.BUSY and "retry later" in str(err.value)
        gate.release.set()


# ----- short decode steps on an idle pool run on the caller's thread ------------------------


def test_a_lone_sessions_short_step_on_an_idle_pool_runs_on_the_loop_thread_and_is_booked():
    import asyncio

    from node.task_pool import PriorityTaskQueue
    from node.task_queue import TaskInfo

    def where(name: str):
        yield  # a task in steps, as the block server's
        return name, threading.get_ident()

    async def scenario() -> dict[str, int]:
        queue = PriorityTaskQueue()
        try:
            ran = dict([
                await queue.submit(TaskInfo("inference", 1, 0, b"c", sole_session=True), where, "decode step"),
                await queue.submit(TaskInfo("inference", 16, 2, b"c", sole_session=True), where, "paid 16 tokens"),
                await queue.submit(TaskInfo("inference", 17, 0, b"c", sole_session=True), where, "17-token step"),
                await queue.submit(TaskInfo("inference", 1, 0, b"c"), where, "one of several sessions"),
                await queue.submit(TaskInfo("forward", 1, 0, b"c"), where, "forward"),
            ])
            assert queue.pool.stats.served_free == 4 and queue.pool.stats.served_paid == 1
            assert (False, b"c") in queue.pool._last_tag and (True, b"c") in queue.pool._last_tag
            return ran
        finally:
            queue.shutdown()

    ran = asyncio.run(scenario())
    me = threading.get_ident()
    assert ran["decode step"] == me and ran["paid 16 tokens"] == me
    assert ran["17-token step"] != me and ran["forward"] != me  # the worker thread
    assert ran["one of several sessions"] != me  # in the queue: a paid step of another could be waiting


def test_no_inline_step_while_the_pool_is_busy_and_no_worker_start_while_one_runs(pool):
    gate = Gate(pool)
    with pool.inline_slot(free()) as granted:  # a task is running: submit as usual
        assert not granted
    gate.release.set()
    gate.future.result(5)

    order: list[str] = []
    with pool.inline_slot(free()) as granted:
        assert granted
        queued = pool.submit(order.append, "queued from another thread")
        time.sleep(0.1)
        assert not queued.done()  # held back while the inline step computes
        order.append("inline")
    queued.result(5)
    assert order == ["inline", "queued from another thread"]
    with pool.inline_slot(free()) as granted:  # idle again
        assert granted


def test_inline_steps_can_be_switched_off():
    import asyncio

    from node.task_pool import PriorityTaskQueue
    from node.task_queue import TaskInfo

    queue = PriorityTaskQueue(PoolConfig(inline_max_tokens=0))
    try:
        got = asyncio.run(queue.submit(TaskInfo("inference", 1, 0, b"c", sole_session=True), threading.get_ident))
    finally:
        queue.shutdown()
    assert got != threading.get_ident()


# ----- tasks in steps: preemption between blocks -------------------------------------------


def blocks(order: list[str], name: str, n: int, during: dict[int, object] | None = None):
    """A task in steps like the block server's: one "block" per step, then its result.
    `during[i]` is called inside step i (to make something arrive while the task runs)."""
    for i in range(n):
        order.append(f"{name}{i}")
        if during and i in during:
            during[i]()  # type: ignore[operator]
        yield
    return f"{name} done"


def test_paid_step_arriving_during_a_long_free_task_runs_after_at_most_one_block(pool):
    order: list[str] = []
    arrived: list = []

    def paid_arrives() -> None:
        arrived.append(pool.submit(order.append, "paid", priority=paid(1)))

    long_free = pool.submit(blocks, order, "free", 8, {2: paid_arrives},
                            priority=free(kind=Kind.FORWARD, tokens=512))
    assert long_free.result(5) == "free done"
    assert arrived[0].result(5) is None
    # the paid step ran right after the block during which it arrived, then the free task resumed
    assert order == ["free0", "free1", "free2", "paid", "free3", "free4", "free5", "free6", "free7"]
    assert pool.stats.preempted == 1


def test_free_inference_step_overtakes_a_running_free_forward_between_blocks(pool):
    order: list[str] = []
    arrived: list = []

    def step_arrives() -> None:
        arrived.append(pool.submit(order.append, "step", priority=free(b"chatty")))

    bulk = pool.submit(blocks, order, "bulk", 4, {0: step_arrives}, priority=free(b"bulk", Kind.FORWARD, 512))
    assert bulk.result(5) == "bulk done" and arrived[0].result(5) is None
    assert order == ["bulk0", "step", "bulk1", "bulk2", "bulk3"]


def test_an_overdue_free_task_is_not_preempted_by_new_paid_work():
    """Aging survives preemption: the free task keeps its tag, and once it is past due no new
    task sorts before it."""
    clock = FakeClock()
    with TaskPool(clock=clock) as pool:
        order: list[str] = []
        arrived: list = []

        def late_paid_arrives() -> None:
            clock.now += 0.2  # the free step's slack is 1/20 s: it is now overdue
            arrived.append(pool.submit(order.append, "paid", priority=paid(1)))

        old_free = pool.submit(blocks, order, "free", 3, {0: late_paid_arrives}, priority=free())
        assert old_free.result(5) == "free done" and arrived[0].result(5) is None
        assert order == ["free0", "free1", "free2", "paid"]
        assert pool.stats.preempted == 0


def test_a_preempted_task_resumes_after_the_urgent_tasks_and_keeps_its_result(pool):
    """Several paid steps arrive while a free task runs; all of them run at the next block
    boundary, then the free task finishes with the same result as uninterrupted."""
    order: list[str] = []
    arrived: list = []

    def burst() -> None:
        arrived.extend(pool.submit(order.append, f"paid{i}", priority=paid(1, bytes([i]))) for i in range(3))

    task = pool.submit(blocks, order, "free", 3, {1: burst}, priority=free(kind=Kind.FORWARD, tokens=64))
    assert task.result(5) == "free done"
    assert [f.result(5) for f in arrived] == [None] * 3
    assert order[:2] == ["free0", "free1"]
    assert sorted(order[2:5]) == ["paid0", "paid1", "paid2"]
    assert order[5:] == ["free2"]


def test_an_error_in_a_step_reaches_the_caller(pool):
    def failing():
        yield
        raise ValueError("block 2 failed")

    with pytest.raises(ValueError, match="block 2 failed"):
        pool.submit(failing).result(5)
    assert pool.submit(lambda: 7).result(5) == 7


def test_shutdown_fails_a_preempted_task_and_closes_it():
    pool = TaskPool()
    closed = threading.Event()
    gate_started, release = threading.Event(), threading.Event()

    def hold() -> None:
        gate_started.set()
        assert release.wait(10)

    def long_task():
        try:
            pool.submit(hold, priority=paid(1000, b"gate"))  # arrives during the first block
            yield
            yield
        finally:
            closed.set()

    preempted = pool.submit(long_task, priority=free(kind=Kind.FORWARD, tokens=512))
    assert gate_started.wait(5)
    threading.Timer(0.1, release.set).start()
    pool.shutdown(wait=True, timeout=5)
    with pytest.raises(PoolClosedError):
        preempted.result(1)
    assert closed.is_set()


def test_the_fifo_queue_runs_tasks_in_steps_to_their_end():
    import asyncio

    from node.task_queue import TaskInfo, TaskQueue

    async def scenario() -> str:
        queue = TaskQueue()
        try:
            return await queue.submit(TaskInfo("forward", 4), blocks, [], "fifo", 4)
        finally:
            queue.shutdown()

    assert asyncio.run(scenario()) == "fifo done"
