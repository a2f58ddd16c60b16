"""Worker processes for the stages that decode many files (split, decode, predict): a pool that survives Ctrl-C."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiprocessing.pool import Pool


def ignore_interrupts() -> None:
    """Worker-process initializer: Ctrl-C reaches the whole process group; only the stage's main process
    handles it (one line, exit 130), the workers are then terminated, without tracebacks of their own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_pool(workers: int) -> Pool:
    """A pool of `workers` forked processes that ignore Ctrl-C, safe against a Ctrl-C while it starts.

    A Ctrl-C arriving while Pool() forks its workers (it takes a moment on a loaded machine) would
    leave the workers forked so far orphaned and alive, holding the terminal's pipes, with no pool
    object for the caller to terminate. So while the pool is made, Ctrl-C is only recorded (Python runs
    signal handlers in the main thread, whichever thread the signal reached: blocking it with
    pthread_sigmask would hold it back in the calling thread only); once the pool exists, a recorded
    Ctrl-C terminates it and goes on, as KeyboardInterrupt, to the stage's handler.
    """
    import multiprocessing

    context = multiprocessing.get_context("fork")
    if threading.current_thread() is not threading.main_thread():  # no handler can be installed there
        return context.Pool(workers, initializer=ignore_interrupts)
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        pool = context.Pool(workers, initializer=ignore_interrupts)
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        pool.terminate()
        if callable(previous):  # Python's default handler raises KeyboardInterrupt; SIG_IGN: it stays ignored
            previous(signal.SIGINT, None)
    return pool


def pool_if_worth_it(workers: int, count: int, minimum: int = 64) -> Pool | None:
    """A worker_pool of `workers` when it pays (several cores and at least `minimum` files), else None (in-process)."""
    if workers > 1 and count >= minimum:
        return worker_pool(workers)
    return None
