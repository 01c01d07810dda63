"""Read objects ahead of the one being sent, within a byte budget.

A WADO-RS study retrieve used to read one object from the object store, send it, then ask for
the next, so the network to the client and the store's latency never overlapped. Here up to
`depth` reads run in worker threads while earlier results are sent; results still come out in
order, and what is read but not yet sent stays under `budget` bytes (the index knows each
object's size), except that one object is always read, however large.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Executor, Future
from typing import TypeVar

T = TypeVar("T")


async def read_ahead(
    jobs: Iterable[tuple[int, Callable[[], T]]], executor: Executor, depth: int, budget: int
) -> AsyncIterator[T]:
    """The results of `jobs` ((expected size, read) pairs), in order, computed ahead."""
    todo = deque(jobs)
    running: deque[tuple[int, Future[T]]] = deque()
    held = 0  # bytes read or being read, not yet handed out
    try:
        while todo or running:
            while todo and len(running) < depth and (not running or held + todo[0][0] <= budget):
                size, read = todo.popleft()
                running.append((size, executor.submit(read)))
                held += size
            size, future = running.popleft()
            result = await asyncio.wrap_future(future)
            held -= size
            yield result
    finally:
        # the client went away (or the reader failed): reads not started never will be
        for _, future in running:
            future.cancel()
