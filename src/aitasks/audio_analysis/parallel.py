"""A process pool with a hard per-item timeout: a hung or crashed decoder costs one item, not the run.

``concurrent.futures.ProcessPoolExecutor`` cannot cancel a running call, and one worker that dies
breaks the whole executor. Here each worker is a process with its own pipe; the parent waits on all
pipes with the earliest deadline as timeout, kills (SIGKILL) a worker whose item overruns, records
that item with ``on_timeout`` and starts a fresh worker. A worker that dies (a segfault in a native
decoder, the OOM killer) is recorded with ``on_crash`` and replaced the same way. Results come back
in input order.

Dispatch is pipelined: each worker holds up to ``prefetch`` items (the one it works on and the next
ones), so it never waits for the parent between items. The clock of an item starts when the worker
starts it (when the previous item's result arrives); when a worker is killed or dies, the items it
had not started go back to the front of the queue. The function is sent once per worker (pickled
with the process), so an item carries only what differs between items (bind shared arguments with
``functools.partial``).

Each worker pins BLAS/OpenMP to ``threads`` threads (threadpoolctl): with one thread per process the
cores are shared by processes, not oversubscribed by threads (25 % or more lost otherwise, measured).
Workers start from a fork server that has already imported the modules they need, so a replacement
worker starts in milliseconds rather than re-importing numpy and scipy. The feature extractor builds
its filter banks with numpy alone (no librosa, whose import and numba compilation of dozens of
functions cost a worker seconds); the fork server's start is then mostly numba compiling the one
loudness kernel (about 1 s), paid once per process.

Values crossing the pipes are pickled: they are our own items and results between our own processes,
never files read from outside.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Modules the fork server imports once, so every worker forked from it starts warm.
PRELOAD = [
    "numpy",
    "scipy.fft",
    "soundfile",
    "soxr",
    "threadpoolctl",
    "aitasks.audio_analysis.analyze",
    "aitasks.audio_analysis.warm",  # compiles the loudness kernel (numba) once, before any fork
]
#: Items a worker holds at once by default: the one it works on and the next.
PREFETCH = 2


def _keep_freed_memory() -> None:
    """Let glibc reuse freed blocks instead of returning them to the kernel after every file.

    Each file allocates tens of MB of arrays. A fresh process starts with glibc's 128 KiB mmap
    threshold, so every such array is a new mapping: freed with munmap, faulted in again page by page
    (about 3 µs a page on this kind of VM) for the next file. A long-lived process adapts the
    threshold by itself; workers are young, so they set it (and the trim threshold) up front.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 64 * 1024 * 1024)
    mallopt(m_trim_threshold, 256 * 1024 * 1024)


def _worker(conn: Connection, fn: Callable[[Any], Any], threads: int) -> None:
    from threadpoolctl import threadpool_limits

    _keep_freed_memory()

    with threadpool_limits(limits=threads):
        while True:
            try:
                msg = conn.recv()
            except EOFError:
                return
            if msg is None:
                return
            idx, item = msg
            try:
                out = ("ok", idx, fn(item))
            except Exception as exc:
                out = ("error", idx, f"{type(exc).__name__}: {exc}")
            conn.send(out)


class _Slot:
    def __init__(self, ctx: Any, fn: Callable[[Any], Any], threads: int) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.conn: Connection = parent
        self.proc = ctx.Process(target=_worker, args=(child, fn, threads), daemon=True)
        self.proc.start()
        child.close()
        self.held: collections.deque[int] = collections.deque()  # sent, in order; the first one is running
        self.deadline = 0.0

    def stop(self, *, kill: bool) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                self.proc.kill()
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def run_pool(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int,
    timeout_s: float,
    on_timeout: Callable[[T], R],
    on_crash: Callable[[T, str], R],
    threads: int = 1,
    progress: Callable[[int, int], None] | None = None,
    prefetch: int = PREFETCH,
) -> list[R]:
    """Apply ``fn`` to every item in worker processes, each call bounded by ``timeout_s``.

    Args:
        fn: A module-level function, or a ``functools.partial`` of one (pickled once per worker).
            Exceptions it raises are passed to ``on_crash`` with their text; ``fn`` should turn
            expected failures into results itself.
        items: The inputs, picklable.
        workers: Number of processes (at least 1).
        timeout_s: Wall-clock limit per item, from the moment its worker starts it; the worker is
            killed past it.
        on_timeout: The result recorded for an item that ran out of time.
        on_crash: The result for an item whose worker died or whose call raised.
        threads: BLAS/OpenMP threads per worker.
        progress: Called with (done, total) after each item.
        prefetch: Items a worker holds at once (at least 1; 1 is one item per round trip).

    Returns:
        One result per item, in input order.
    """
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if timeout_s <= 0:
        raise ValueError("timeout_s must be > 0")
    if prefetch < 1:
        raise ValueError("prefetch must be >= 1")
    if not items:
        return []
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
    results: list[Any] = [None] * len(items)
    done = 0
    queue = collections.deque(range(len(items)))
    slots = [_Slot(ctx, fn, threads) for _ in range(min(workers, len(items)))]

    def fill(slot: _Slot) -> None:
        """Top the slot up to ``prefetch`` items; a slot that was idle starts its clock now."""
        if not slot.held:
            slot.deadline = time.monotonic() + timeout_s
        while queue and len(slot.held) < prefetch:
            idx = queue.popleft()
            slot.held.append(idx)
            slot.conn.send((idx, items[idx]))

    def finish(idx: int, value: Any) -> None:
        nonlocal done
        results[idx] = value
        done += 1
        if progress is not None:
            progress(done, len(items))

    def replace(i: int) -> _Slot:
        """Kill slot ``i``'s worker; its unstarted items go back to the front of the queue."""
        slot = slots[i]
        slot.stop(kill=True)
        queue.extendleft(reversed(list(slot.held)[1:]))
        slots[i] = _Slot(ctx, fn, threads)
        return slots[i]

    try:
        for slot in slots:
            fill(slot)
        while done < len(items):
            busy = [s for s in slots if s.held]
            now = time.monotonic()
            ready = wait([s.conn for s in busy], timeout=max(0.0, min(s.deadline for s in busy) - now))
            for i, slot in enumerate(slots):
                if not slot.held:
                    continue
                idx = slot.held[0]
                if slot.conn in ready:
                    try:
                        status, got_idx, value = slot.conn.recv()
                    except (EOFError, OSError):
                        slot.proc.join(timeout=5)
                        code = slot.proc.exitcode
                        fresh = replace(i)
                        finish(idx, on_crash(items[idx], f"worker process died (exit code {code})"))
                        fill(fresh)
                        continue
                    assert got_idx == idx
                    slot.held.popleft()
                    slot.deadline = time.monotonic() + timeout_s  # the next held item starts now
                    finish(idx, value if status == "ok" else on_crash(items[idx], value))
                    fill(slot)
                elif time.monotonic() >= slot.deadline:
                    fresh = replace(i)
                    finish(idx, on_timeout(items[idx]))
                    fill(fresh)
    finally:
        for slot in slots:
            slot.stop(kill=bool(slot.held))
    return results
