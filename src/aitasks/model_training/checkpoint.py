"""Resumable training checkpoints in the run's storage: safetensors for tensors, JSON for the rest.

A checkpoint is everything a training loop needs to continue as if it had never stopped: the model's
weights, every optimizer's state (Adam/SparseAdam moments and step counts), the learning-rate
schedule's position (the global step; the schedule is a pure function of it), the fp16 loss
scaler's state, the torch RNG states, the position in the epoch (epoch, batch), the partial epoch's
loss sum, the history of finished epochs and the running checkpoint average.

Layout under the checkpoint URI (a local directory or ``gs://``; any :class:`Storage`)::

    step-000000120/state.safetensors   every tensor (model.*, avg.*, optim.<i>.<param>.<name>, rng.*)
    step-000000120/state.json          counters, history, optimizer hyper-parameters, tensor specs, sha256
    LATEST.json                        {"step": 120, "dir": "step-000000120", "sha256": {...}}

Each file is written atomically (temp + fsync + rename locally; an upload is visible only when
complete on GCS), and ``LATEST.json`` is written **last**: a writer killed mid-checkpoint leaves the
previous ``LATEST.json``, which still names a complete checkpoint. Older checkpoints beyond ``keep``
are deleted after the pointer moves.

Reading never unpickles: tensors come from safetensors (checked against the specs ``state.json``
lists), the rest from JSON validated by pydantic. The sha256 of both files is in ``LATEST.json``
and the tensor file's is in ``state.json`` too: a truncated, flipped or replaced file is a
:class:`~aitasks.runtime.errors.DataFormatError` naming the file and the problem. There is no silent
restart from scratch: a corrupt latest checkpoint fails the run (the operator deletes the checkpoint
location to start over, or points the run elsewhere). Only the absence of ``LATEST.json`` means
"no checkpoint yet".

A checkpoint is bound to the run that wrote it by a fingerprint (model configuration, the training
settings that change the result, the rows' keys): resuming a different run from it is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aitasks.runtime.errors import DataFormatError, FieldIssue, InvalidInputError

if TYPE_CHECKING:
    import torch

    from aitasks.runtime.storage import Storage

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointPolicy",
    "CheckpointState",
    "CheckpointStore",
    "optimizer_tensors",
    "restore_optimizer",
]

CHECKPOINT_FORMAT: Final = "aitasks.train_checkpoint"
CHECKPOINT_VERSION: Final = 1
LATEST: Final = "LATEST.json"
TENSORS: Final = "state.safetensors"
STATE: Final = "state.json"
_DIR = re.compile(r"^step-[0-9]{9}$")


class CheckpointPolicy(BaseModel):
    """Where and how often to checkpoint.

    Attributes:
        uri: The checkpoint location (local directory or ``gs://`` prefix). A run resumes from the
            latest complete checkpoint found here.
        every_steps: Checkpoint every this many optimizer steps; None: at the end of every epoch.
        keep: Complete checkpoints kept (the newest); older ones are deleted.
        resume: Resume from the latest checkpoint when there is one (False: refuse to start when one
            exists, so a run never overwrites another run's checkpoints by accident).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str = Field(min_length=1)
    every_steps: int | None = Field(default=None, ge=1)
    keep: int = Field(default=2, ge=1, le=100)
    resume: bool = True


class CheckpointState(BaseModel):
    """The non-tensor part of a checkpoint (``state.json``).

    Attributes:
        format: Always :data:`CHECKPOINT_FORMAT`.
        format_version: Layout version.
        fingerprint: Hash of what the result depends on (config, result-changing settings, row keys).
        step: Optimizer steps done (the learning-rate schedule's position).
        epoch: The epoch in progress (1-based); when ``batch`` equals the steps per epoch it is finished.
        batch: Batches of ``epoch`` done.
        epoch_loss_sum: Sum of the per-row losses of ``epoch`` so far.
        epoch_seconds: Training seconds of ``epoch`` so far.
        history: The finished epochs' history entries.
        averaged: Checkpoints folded into the running average (``avg.*`` tensors when > 0).
        optimizers: Per optimizer: ``param_groups`` and the non-tensor state values (e.g. SparseAdam's int step).
        scaler: The fp16 GradScaler's state (None when not used).
        world_size: Processes that trained up to here (informational; resuming with another count is allowed).
        tensors: Name -> ``[shape, dtype]`` of every tensor in ``state.safetensors``.
        tensors_sha256: sha256 of ``state.safetensors``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str
    format_version: int
    fingerprint: str
    step: int = Field(ge=0)
    epoch: int = Field(ge=1)
    batch: int = Field(ge=0)
    epoch_loss_sum: float
    epoch_seconds: float = Field(ge=0)
    history: list[dict[str, float]]
    averaged: int = Field(ge=0)
    optimizers: list[dict[str, Any]]
    scaler: dict[str, Any] | None = None
    world_size: int = Field(default=1, ge=1)
    tensors: dict[str, tuple[list[int], str]]
    tensors_sha256: str


class _Latest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str
    step: int = Field(ge=0)
    dir: str = Field(pattern=_DIR.pattern)
    sha256: dict[str, str]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def optimizer_tensors(
    optimizers: list[torch.optim.Optimizer],
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Split optimizers' ``state_dict()`` into tensors (``optim.<i>.<param>.<name>``) and JSON-able rest."""
    import torch

    tensors: dict[str, torch.Tensor] = {}
    docs: list[dict[str, Any]] = []
    for i, opt in enumerate(optimizers):
        sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, st in sd["state"].items():
            for name, value in st.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{i}.{pid}.{name}"] = value.detach().to("cpu")
                else:
                    scalars.setdefault(str(pid), {})[name] = value
        groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
        docs.append({"param_groups": groups, "scalars": scalars})
    return tensors, docs


def restore_optimizer(
    opt: torch.optim.Optimizer, index: int, doc: dict[str, Any], tensors: dict[str, torch.Tensor], where: str
) -> None:
    """Load optimizer ``index``'s state from a checkpoint's tensors and JSON (shapes checked against the params)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optim.{index}."
    for name, t in tensors.items():
        if not name.startswith(prefix):
            continue
        pid_s, key = name[len(prefix) :].split(".", 1)
        pid = int(pid_s)
        if pid >= len(params):
            raise DataFormatError(
                where, f"optimizer {index} has state for parameter {pid}, the model has {len(params)}"
            )
        if key.startswith("exp_avg") and tuple(t.shape) != tuple(params[pid].shape):
            raise DataFormatError(
                where, f"{name} has shape {list(t.shape)}, parameter {pid} has {list(params[pid].shape)}"
            )
        state.setdefault(pid, {})[key] = t.to(params[pid].device)
    for pid_s, values in (doc.get("scalars") or {}).items():
        state.setdefault(int(pid_s), {}).update(values)
    groups = []
    for g in doc["param_groups"]:
        groups.append({k: tuple(v) if k == "betas" else v for k, v in g.items()})
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError) as exc:
        raise DataFormatError(where, f"optimizer {index} state does not fit the model: {exc}") from None


class CheckpointStore:
    """Writes and reads the checkpoints of one run under ``policy.uri`` (see the module docstring)."""

    def __init__(self, policy: CheckpointPolicy, storage: Storage | None = None) -> None:
        from aitasks.runtime.storage import storage_for

        self.policy = policy
        self.storage = storage or storage_for(policy.uri)

    def _uri(self, *keys: str) -> str:
        from aitasks.runtime.storage import join_uri

        return join_uri(self.policy.uri, *keys)

    def save(self, state: CheckpointState, tensors: dict[str, torch.Tensor]) -> str:
        """Write one checkpoint (tensors, state, then the pointer); returns its directory URI.

        ``state.tensors`` and ``state.tensors_sha256`` are filled in here.
        """
        from safetensors.torch import save as safetensors_bytes

        from aitasks.platform.weights import canonical_safetensors, tensor_specs

        cpu = {k: v.detach().to("cpu").contiguous() for k, v in sorted(tensors.items())}
        raw = canonical_safetensors(
            safetensors_bytes(cpu, metadata={"format": CHECKPOINT_FORMAT, "version": str(CHECKPOINT_VERSION)})
        )
        specs = {k: (list(shape), dtype) for k, (shape, dtype) in tensor_specs(cpu).items()}
        full = state.model_copy(update={"tensors": specs, "tensors_sha256": _sha256(raw)})
        doc = json.dumps(full.model_dump(mode="json"), sort_keys=True).encode("utf-8")
        name = f"step-{state.step:09d}"
        self.storage.write_bytes(self._uri(name, TENSORS), raw)
        self.storage.write_bytes(self._uri(name, STATE), doc)
        latest = _Latest(
            format=CHECKPOINT_FORMAT, step=state.step, dir=name, sha256={TENSORS: _sha256(raw), STATE: _sha256(doc)}
        )
        # The pointer last: until it moves, readers see the previous complete checkpoint.
        self.storage.write_bytes(self._uri(LATEST), json.dumps(latest.model_dump(), sort_keys=True).encode("utf-8"))
        self._prune(keep_from=state.step)
        return self._uri(name)

    def _dirs(self) -> list[str]:
        names = set()
        prefix = self.policy.uri.rstrip("/") + "/"
        for obj in self.storage.list(prefix):
            first = obj[len(prefix) :].split("/", 1)[0] if obj.startswith(prefix) else ""
            if _DIR.match(first):
                names.add(first)
        return sorted(names)

    def _prune(self, keep_from: int) -> None:
        old = [d for d in self._dirs() if int(d[5:]) <= keep_from]
        for d in old[: max(0, len(old) - self.policy.keep)]:
            for f in (TENSORS, STATE):
                self.storage.delete(self._uri(d, f))
            self._remove_dir(d)

    def clear(self) -> None:
        """Delete every checkpoint of this run (after its result is published, they are dead weight)."""
        from aitasks.runtime.storage import is_gcs

        if not is_gcs(self.policy.uri):
            self.storage.delete(self.policy.uri)  # local: the whole directory tree
            return
        for obj in self.storage.list(self.policy.uri.rstrip("/") + "/"):
            self.storage.delete(obj)

    def _remove_dir(self, name: str) -> None:
        """Remove an emptied local step directory (object stores have no directories to remove)."""
        from aitasks.runtime.storage import is_gcs

        uri = self._uri(name)
        if not is_gcs(uri) and not self.storage.list(uri + "/"):
            self.storage.delete(uri)

    def latest_step(self) -> int | None:
        """The step of the committed checkpoint, or None when there is none."""
        pointer = self._uri(LATEST)
        if not self.storage.exists(pointer):
            return None
        return self._read_latest(pointer).step

    def _read_latest(self, pointer: str) -> _Latest:
        try:
            latest = _Latest.model_validate_json(self.storage.read_bytes(pointer))
        except ValidationError as exc:
            raise DataFormatError(pointer, f"corrupt checkpoint pointer: {exc.errors()[0]['msg']}") from None
        if latest.format != CHECKPOINT_FORMAT:
            raise DataFormatError(pointer, f"format {latest.format!r}, expected {CHECKPOINT_FORMAT!r}")
        return latest

    def load(
        self, fingerprint: str, model_specs: dict[str, tuple[tuple[int, ...], str]]
    ) -> tuple[CheckpointState, dict[str, torch.Tensor]] | None:
        """The committed checkpoint (state, tensors on CPU), or None when there is none yet.

        Args:
            fingerprint: This run's fingerprint; a checkpoint written by another run is refused.
            model_specs: ``model.*`` tensor specs the model expects (``avg.*`` must match them too).

        Raises:
            DataFormatError: A file is missing, corrupt (hash, JSON, safetensors) or does not fit the model.
            InvalidInputError: The checkpoint belongs to a different run (fingerprint), or one exists
                and ``policy.resume`` is False.
        """
        from aitasks.platform.weights import load_tensors

        pointer = self._uri(LATEST)
        if not self.storage.exists(pointer):
            return None
        if not self.policy.resume:
            raise InvalidInputError(
                "model.train",
                [FieldIssue("checkpoint.uri", f"{self.policy.uri} already holds a checkpoint and resume is off")],
            )
        latest = self._read_latest(pointer)
        files: dict[str, bytes] = {}
        for fname in (TENSORS, STATE):
            uri = self._uri(latest.dir, fname)
            try:
                files[fname] = self.storage.read_bytes(uri)
            except (FileNotFoundError, OSError) as exc:
                raise DataFormatError(uri, f"checkpoint file is missing or unreadable: {exc}") from None
            if _sha256(files[fname]) != latest.sha256.get(fname):
                raise DataFormatError(uri, "checkpoint file is corrupt: its sha256 differs from LATEST.json")
        state_uri, tensors_uri = self._uri(latest.dir, STATE), self._uri(latest.dir, TENSORS)
        try:
            state = CheckpointState.model_validate_json(files[STATE])
        except ValidationError as exc:
            raise DataFormatError(state_uri, f"invalid checkpoint state: {exc.errors()[0]['msg']}") from None
        if state.format != CHECKPOINT_FORMAT or state.format_version != CHECKPOINT_VERSION:
            raise DataFormatError(state_uri, f"format {state.format!r} v{state.format_version} is not readable here")
        if state.fingerprint != fingerprint:
            raise InvalidInputError(
                "model.train",
                [
                    FieldIssue(
                        "checkpoint.uri",
                        f"{self.policy.uri} holds a checkpoint of a different run (model, settings or data differ)",
                    )
                ],
            )
        expected = {k: (tuple(shape), dtype) for k, (shape, dtype) in state.tensors.items()}
        for name, spec in model_specs.items():
            for prefix in ("model.", "avg.") if state.averaged else ("model.",):
                if expected.get(prefix + name) != spec:
                    raise DataFormatError(tensors_uri, f"tensor {prefix + name!r} missing or not {spec}")
        with tempfile.TemporaryDirectory(prefix="aitasks-ckpt-") as tmp:
            local = Path(tmp) / TENSORS
            local.write_bytes(files[TENSORS])

            def check(meta: dict[str, str]) -> None:
                if meta.get("format") != CHECKPOINT_FORMAT:
                    raise DataFormatError(tensors_uri, f"metadata format {meta.get('format')!r}")

            try:
                tensors, _ = load_tensors(local, expected, check_metadata=check)
            except DataFormatError as exc:
                raise DataFormatError(tensors_uri, exc.problem) from None
        return state, tensors
