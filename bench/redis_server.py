"""Redis server throughput for the online store's read: HGETALL of one user's feature hash, vs PING.

The capacity model needs what one Redis shard serves, not only what one client waits: this runs
``redis-benchmark`` (the tool Redis ships) against a private ``redis-server`` on a free localhost port, on a
hash shaped like a Feast user row (one field per serving feature, 4-byte field names as Feast's hashed
names, small serialized values, plus the ``_ts:`` timestamp field), with 50 clients, unpipelined (one read
per round trip, as a serving request does) and pipelined by 16 (what batching requests buys). The baseline
is ``PING`` in the same run: the server's ceiling on this machine, so the ratio is what the read itself costs.
The client runs on the same (shared, 2-core) machine as the server: a lower bound of one shard's capacity.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.common import record

REQUESTS = 100_000
CLIENTS = 50


def _rps(port: int, pipeline: int, *command: str) -> float:
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-n", str(REQUESTS), "-c", str(CLIENTS)]
    out = subprocess.run(
        [*argv, "-P", str(pipeline), "--csv", *command],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    return float(rows[-1]["rps"])


def bench_redis_server() -> list[dict[str, Any]]:
    from aitasks.platform.feature_store import SERVING_USER_FEATURES
    from bench.feast_online import private_redis
    from bench.ondemand import ServiceUnavailableError

    if shutil.which("redis-benchmark") is None or shutil.which("redis-server") is None:
        raise ServiceUnavailableError("redis-server / redis-benchmark not installed")
    import redis

    with tempfile.TemporaryDirectory(prefix="aitasks-bench-redis-") as tmp, private_redis(Path(tmp)) as url:
        assert url is not None
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        client = redis.Redis(port=port)
        fields: dict[bytes, bytes] = {
            i.to_bytes(4, "big"): b"\x35" + bytes(4) for i in range(len(SERVING_USER_FEATURES))
        }
        fields[b"_ts:user_features"] = b"\x08" + bytes(5)
        client.hset("user:u0000001", mapping=fields)  # type: ignore[arg-type]
        bytes_per_key = int(client.memory_usage("user:u0000001") or 0)
        client.close()
        out: list[dict[str, Any]] = []
        for pipeline in (1, 16):
            ping = _rps(port, pipeline, "PING")
            hget = _rps(port, pipeline, "HGETALL", "user:u0000001")
            params = {
                "requests": REQUESTS,
                "clients": CLIENTS,
                "pipeline": pipeline,
                "hash_fields": len(fields),
                "bytes_per_key": bytes_per_key,
                "server": "private redis-server, no persistence, one I/O thread",
                "client": "redis-benchmark on the same machine (shares its cores)",
            }
            out.append(
                record(
                    "redis_server",
                    f"hgetall_ops_per_s[P{pipeline}]",
                    hget,
                    "ops/s",
                    "ping_ops_per_s",
                    ping,
                    params,
                    higher_is_better=True,
                )
            )
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(bench_redis_server(), indent=2))
