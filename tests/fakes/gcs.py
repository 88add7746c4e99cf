"""An in-process fake of the google-cloud-storage client surface we use, enforcing generation preconditions.

gcp-storage-emulator ignores preconditions (FIELD_NOTES), so precondition behaviour is tested here.
It raises the real ``google.api_core.exceptions`` classes, like the real client.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.api_core import exceptions as gexc


@dataclass
class _Obj:
    data: bytes
    generation: int


class FakeBlob:
    def __init__(self, bucket: FakeBucket, name: str) -> None:
        self.bucket = bucket
        self.name = name
        self.generation: int | None = None
        self.md5_hash: str | None = None
        self.crc32c: str | None = None

    def _check(self, if_generation_match: int | None) -> None:
        cur = self.bucket.objects.get(self.name)
        if if_generation_match is None:
            return
        cur_gen = 0 if cur is None else cur.generation
        if cur_gen != if_generation_match:
            raise gexc.PreconditionFailed(f"generation {cur_gen} != {if_generation_match} for {self.name}")

    def upload_from_string(self, data: bytes | str, if_generation_match: int | None = None) -> None:
        raw = data.encode() if isinstance(data, str) else bytes(data)
        with self.bucket.client.lock:
            if self.bucket.client.fail_next_uploads > 0:
                self.bucket.client.fail_next_uploads -= 1
                raise gexc.ServiceUnavailable("injected 503")
            self._check(if_generation_match)
            self.bucket.client.generation += 1
            self.bucket.objects[self.name] = _Obj(raw, self.bucket.client.generation)

    def upload_from_filename(self, filename: str, if_generation_match: int | None = None) -> None:
        self.upload_from_string(Path(filename).read_bytes(), if_generation_match=if_generation_match)

    def _get(self) -> _Obj:
        obj = self.bucket.objects.get(self.name)
        if obj is None:
            raise gexc.NotFound(f"No such object: {self.bucket.name}/{self.name}")
        return obj

    def download_as_bytes(self) -> bytes:
        return self._get().data

    def download_to_filename(self, filename: str) -> None:
        Path(filename).write_bytes(self._get().data)

    def exists(self) -> bool:
        return self.name in self.bucket.objects

    def reload(self) -> None:
        obj = self._get()
        self.generation = obj.generation
        self.md5_hash = base64.b64encode(hashlib.md5(obj.data).digest()).decode()
        self.crc32c = None

    def delete(self) -> None:
        with self.bucket.client.lock:
            self._get()
            del self.bucket.objects[self.name]


class FakeBucket:
    def __init__(self, client: FakeGCSClient, name: str) -> None:
        self.client = client
        self.name = name
        self.objects: dict[str, _Obj] = client.buckets.setdefault(name, {})

    def blob(self, name: str) -> FakeBlob:
        return FakeBlob(self, name)


class FakeGCSClient:
    def __init__(self) -> None:
        self.buckets: dict[str, dict[str, _Obj]] = {}
        self.generation = 1000
        self.lock = threading.Lock()
        self.fail_next_uploads = 0

    def bucket(self, name: str) -> FakeBucket:
        return FakeBucket(self, name)

    def list_blobs(self, bucket: str, prefix: str = "") -> list[Any]:
        return [
            FakeBlob(FakeBucket(self, bucket), n) for n in sorted(self.buckets.get(bucket, {})) if n.startswith(prefix)
        ]
