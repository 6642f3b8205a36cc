"""LMDB commits off the encoder's thread: one writer thread, in submission order.

A commit of a batch (its vectors, patches and done marker in one transaction) waits for the
disk (an fsync each); in a background thread that wait overlaps the next batch's encoding.
Crash safety is the transaction's: a kill loses the batches queued but not yet committed,
and a resumed run redoes exactly those (their markers are missing)."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from asign.store import Vectors

QUEUE = 4  # batches committed behind the encoder at most (bounds memory; errors surface soon)


class BackgroundPuts:
    """``put`` as ``Vectors.put``, committed by a writer thread; a failed commit raises on a
    later ``put`` or on leaving the ``with`` block, which first waits for every commit."""

    def __init__(self, vec: Vectors, queue: int = QUEUE):
        self.vec = vec
        self.queue = queue
        self.pending: deque[Future] = deque()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asign-commit")

    def put(self, **kwargs: Any) -> None:
        # materialise iterators here: the caller may reuse what they read from
        args = {k: list(v) for k, v in kwargs.items()}
        self.pending.append(self.pool.submit(self.vec.put, **args))
        while self.pending and (len(self.pending) > self.queue or self.pending[0].done()):
            self.pending.popleft().result()

    def __enter__(self) -> BackgroundPuts:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            while self.pending:
                future = self.pending.popleft()
                if exc[0] is None:
                    future.result()
                else:  # already failing: commit what was queued, keep the first error
                    future.exception()
        finally:
            self.pool.shutdown(wait=True)
