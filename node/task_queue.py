"""The seam between the event loop and compute: submit a task, await its result.

All block compute runs in one worker thread so the event loop stays responsive (streams,
DHT refreshes) and torch never runs two spans at once. This is a plain FIFO; the priority
scheduler (node/task_pool.py) replaces it behind the same `submit` signature.

A task function may return a generator instead of its result: a task in steps. Each
`next()` computes one step (the block server yields after every block), and the
generator's return value is the task's result. The priority pool may run a more urgent
task between two steps; this FIFO simply runs the steps back to back (`run_steps`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class TaskInfo:
    """What a scheduler may know about a task when ordering it."""

    kind: str  # "forward" | "backward" | "inference" | "open"
    tokens: int = 0
    priority: int = 0  # higher first (paid); 0 = free
    client_key: bytes = b""
    sole_session: bool = False  # the node's only open inference session (may run inline when idle)


def run_steps(result: Any) -> Any:
    """The result of a task: `result` itself, or a task in steps run to its end."""
    if not isinstance(result, Generator):
        return result
    while True:
        try:
            next(result)
        except StopIteration as done:
            return done.value


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return run_steps(fn(*args))


class TaskQueue:
    """FIFO of compute tasks executed by one worker thread."""

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="corolla-compute")

    async def submit(self, info: TaskInfo, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the compute thread; returns its result (or raises its error)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, _call, fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
