"""Memory of the ANN index per item: an hnswlib graph at the ANN bench's size and M, vs the raw vectors.

The capacity model sizes index shards from this: resident memory the process gains while building the index
(``/proc/self/statm``: vectors, level-0 links, upper levels, labels, locks, the label map, allocator overhead),
and the size of the saved index file (what a shard downloads), both per item, against the raw float32 vector
(``4 x dim`` bytes, the baseline). Same items, dimension, M and ef_construction as :mod:`bench.ann`.

The build is measured in a fresh child process (``python -m bench.ann_memory --child``): in the bench
runner's own process the heap holds what earlier benches freed, and glibc hands it back to the kernel at
unpredictable points, so the growth could even come out negative. The child allocates the vectors first,
then trims the heap (``malloc_trim``) before each reading, so the difference is the index's own memory.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import record


def _rss() -> int:
    """Resident bytes of this process, after glibc returned the free parts of its heap (where it can)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):  # not glibc: read RSS as it is
            ctypes.CDLL(name).malloc_trim(0)
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_ann_memory() -> list[dict[str, Any]]:
    """Run :func:`_measure` in a fresh interpreter and return its records."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "bench.ann_memory", "--child"], capture_output=True, text=True, check=False, timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.ann_memory child failed: {done.stderr[-2000:]}")
    records: list[dict[str, Any]] = json.loads(done.stdout)
    return records


def _measure() -> list[dict[str, Any]]:
    import hnswlib

    from bench.ann import BUILD_THREADS, DIM, EF_CONSTRUCTION, N_ITEMS, M, clustered_vectors

    items = clustered_vectors(N_ITEMS, DIM)
    raw = 4 * DIM
    before = _rss()
    index = hnswlib.Index(space="ip", dim=DIM)
    index.init_index(max_elements=N_ITEMS, M=M, ef_construction=EF_CONSTRUCTION)
    index.set_num_threads(BUILD_THREADS)
    t0 = time.perf_counter()
    index.add_items(items, list(range(N_ITEMS)))
    build_s = time.perf_counter() - t0
    rss_per_item = (_rss() - before) / N_ITEMS
    with tempfile.TemporaryDirectory(prefix="aitasks-bench-annmem-") as tmp:
        path = Path(tmp) / "index.bin"
        index.save_index(str(path))
        file_per_item = path.stat().st_size / N_ITEMS
    params = {
        "items": N_ITEMS,
        "dim": DIM,
        "M": M,
        "ef_construction": EF_CONSTRUCTION,
        "build_threads": BUILD_THREADS,
        "build_s": round(build_s, 2),
        "library": f"hnswlib {getattr(hnswlib, '__version__', '')}".strip(),
        "rss": "resident set growth over the build (/proc/self/statm, heap trimmed before each reading), "
        "in a fresh child process",
    }
    return [
        record("ann_memory", "rss_bytes_per_item", rss_per_item, "B", "raw_float32_vector", raw, params),
        record("ann_memory", "file_bytes_per_item", file_per_item, "B", "raw_float32_vector", raw, params),
    ]


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(_measure() if "--child" in sys.argv[1:] else bench_ann_memory(), indent=2))
