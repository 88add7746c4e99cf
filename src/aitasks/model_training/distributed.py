"""Distributed data-parallel training of the two-tower model (PyTorch DDP, launched by torchrun).

How a batch is split
    Every rank holds the training rows (they are small next to the model) and computes the same
    epoch order (:func:`~aitasks.model_training.two_tower.epoch_order`: a seeded hash, no RNG to
    keep in step). The global batch of ``batch_size`` rows is cut into ``world_size`` contiguous
    chunks (:func:`shard_bounds`, sizes differ by at most one); rank ``r`` runs its chunk only. Over
    an epoch the ranks' rows are a disjoint cover of the epoch (tested).

In-batch negatives are all-gathered
    The loss is in-batch sampled softmax: every other track of the batch is a negative. Per-rank
    negatives would shrink the candidate set from ``batch_size`` to ``batch_size / world_size`` and
    change what the model learns (and the logQ correction's meaning) with the number of processes.
    Instead each rank all-gathers the item vectors of the whole global batch
    (``torch.distributed.nn.functional.all_gather``, which carries gradients back to the rank that
    produced each vector) and scores its users against all of them. With the loss of rank ``r``
    scaled to ``world_size / batch_rows x (sum of its rows' losses)``, DDP's gradient average equals
    the gradient of the single-process mean loss: 2 processes train the same model as 1, up to float
    summation order (the test holds recall@10 of both within a stated tolerance).

Gradients
    The dense parameters (MLPs, categorical embeddings) are all-reduced by
    :class:`torch.nn.parallel.DistributedDataParallel` (bucketed, overlapped with backward). The id
    tables have sparse gradients for SparseAdam; NCCL cannot all-reduce sparse tensors, so they are
    kept out of DDP and synchronised here (:func:`sync_sparse_grads`: all-gather of each rank's
    touched rows and values, divided by the world size), on gloo and NCCL alike.

Rank 0 only
    Checkpoints, the ``on_epoch`` callback (metrics logging), the saved model and the report are
    written by rank 0; every rank reads a checkpoint to resume.

Entry point
    ``python -m torch.distributed.run --nproc-per-node N -m aitasks.model_training.distributed --job JOB.json``
    (``torchrun``) starts N workers of :func:`main`; :func:`launch_local` does that from Python for the
    ``model.train`` task when ``workers > 1``, and a Kubeflow ``PyTorchJob`` runs the same command in
    every replica (:mod:`aitasks.model_training.pytorchjob`). Backend: NCCL when the workers use
    CUDA, gloo otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict, Field

from aitasks.runtime.errors import FatalError, FieldIssue, InvalidInputError

if TYPE_CHECKING:
    import torch

    from aitasks.model_training.checkpoint import CheckpointPolicy
    from aitasks.model_training.two_tower import TrainConfig, TrainReport

__all__ = [
    "DistInfo",
    "JobSpec",
    "current",
    "gather_rows",
    "launch_local",
    "main",
    "shard_bounds",
    "sync_sparse_grads",
]

_TASK: Final = "model.train"
REPORT_FILE: Final = "train_report.json"


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the process group.

    Attributes:
        rank: Global rank.
        world_size: Number of processes.
        local_rank: Rank on this node (the GPU index when training on CUDA).
        backend: ``gloo`` or ``nccl``.
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> DistInfo | None:
    """The initialised default process group, or None when this process is not distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=str(dist.get_backend()),
    )


def shard_bounds(rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous chunk of a batch of ``rows`` rows.

    Chunk sizes differ by at most one (the first ``rows % world_size`` ranks get one more); a rank
    may get an empty chunk when ``rows < world_size``.
    """
    if world_size < 1 or not 0 <= rank < world_size or rows < 0:
        raise ValueError(f"bad shard: rows={rows} rank={rank} world_size={world_size}")
    base, extra = divmod(rows, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def gather_rows(x: torch.Tensor, rows: int, world_size: int) -> torch.Tensor:
    """All ranks' chunks of a batch of ``rows`` rows, concatenated in rank order, with gradients.

    ``x`` is this rank's chunk (``shard_bounds`` rows). Chunks are padded to the largest size for the
    collective and the padding dropped after. The backward pass sums each chunk's gradients from
    every rank back onto the rank that computed it (``torch.distributed.nn.functional.all_gather``).
    """
    import torch
    from torch.distributed.nn.functional import all_gather

    size = -(-rows // world_size)
    pad = size - x.shape[0]
    padded = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
    parts = all_gather(padded)
    sizes = [b - a for a, b in (shard_bounds(rows, r, world_size) for r in range(world_size))]
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def sync_sparse_grads(params: Sequence[torch.Tensor], world_size: int) -> None:
    """Average sparse gradients over the ranks: every rank ends with the same summed-then-divided gradient.

    Each rank's gradient is coalesced, then indices and values are all-gathered (padded to the
    largest count) and concatenated; SparseAdam coalesces the duplicates. Works on gloo and NCCL.
    """
    import torch
    import torch.distributed as dist

    for p in params:
        g = p.grad
        if g is None:
            g = torch.sparse_coo_tensor(
                torch.zeros((1, 0), dtype=torch.int64, device=p.device),
                p.new_zeros((0, *p.shape[1:])),
                p.shape,
            )
        if not g.is_sparse:
            raise FatalError(f"expected a sparse gradient for a {tuple(p.shape)} id table")
        g = g.coalesce()
        idx, val = g.indices()[0], g.values()
        count = torch.tensor([idx.shape[0]], dtype=torch.int64, device=p.device)
        counts = [torch.zeros_like(count) for _ in range(world_size)]
        dist.all_gather(counts, count)
        top = max(int(c.item()) for c in counts)
        pidx = torch.cat([idx, idx.new_zeros(top - idx.shape[0])])
        pval = torch.cat([val, val.new_zeros((top - val.shape[0], *val.shape[1:]))])
        all_idx = [torch.empty_like(pidx) for _ in range(world_size)]
        all_val = [torch.empty_like(pval) for _ in range(world_size)]
        dist.all_gather(all_idx, pidx)
        dist.all_gather(all_val, pval)
        n = [int(c.item()) for c in counts]
        indices = torch.cat([t[:k] for t, k in zip(all_idx, n, strict=True)]).unsqueeze(0)
        values = torch.cat([t[:k] for t, k in zip(all_val, n, strict=True)]) / world_size
        p.grad = torch.sparse_coo_tensor(indices, values, p.shape)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks (in place, returned)."""
    import torch.distributed as dist

    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# ------------------------------------------------------------------------------------- job + main


class JobSpec(BaseModel):
    """What every worker of one distributed training run reads (``--job``): one JSON file.

    Attributes:
        training_set: The training-set directory (a local path on every worker) or a bundle URI
            (``gs://.../MANIFEST.json``; opened with the storage of the worker's settings).
        output: Where rank 0 writes the model: a local directory, or a URI to publish the bundle to.
        train: :class:`~aitasks.model_training.two_tower.TrainConfig` fields.
        arch: Architecture fields (``embedding_dim``, ``id_dim``, ``hidden_dim``, ``temperature``).
        checkpoint: :class:`~aitasks.model_training.checkpoint.CheckpointPolicy` fields, or None.
        meta: Extra metadata for a published bundle.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    training_set: str = Field(min_length=1)
    output: str = Field(min_length=1)
    train: dict[str, Any]
    arch: dict[str, Any] = Field(default_factory=dict)
    checkpoint: dict[str, Any] | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


def _init_process_group() -> DistInfo:
    """Join the group torchrun described in the environment (NCCL on CUDA workers, gloo otherwise)."""
    import torch
    import torch.distributed as dist

    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise FatalError(f"not started by torchrun: {', '.join(missing)} unset (use python -m torch.distributed.run)")
    device = os.environ.get("AITASKS_TRAIN_DEVICE", "auto")
    use_cuda = torch.cuda.is_available() and device != "cpu"
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    info = current()
    assert info is not None
    return info


def run_job(job: JobSpec) -> TrainReport | None:
    """Train as one worker of the process group; rank 0 saves the model and returns the report."""
    import tempfile

    from aitasks.model_training.checkpoint import CheckpointPolicy
    from aitasks.model_training.two_tower import TrainConfig
    from aitasks.platform.compute import usable_cpus
    from aitasks.runtime.storage import is_gcs

    info = current()
    if info is None:
        raise FatalError("run_job needs an initialised process group")
    tcfg = TrainConfig.model_validate(job.train)
    if tcfg.num_threads is None:
        # Workers on one node share its CPUs: split them instead of each taking them all.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        tcfg = tcfg.model_copy(update={"num_threads": max(1, usable_cpus() // max(local, 1))})
    policy = None if job.checkpoint is None else CheckpointPolicy.model_validate(job.checkpoint)
    remote_in = is_gcs(job.training_set) or job.training_set.endswith("MANIFEST.json")
    remote_out = is_gcs(job.output)
    with tempfile.TemporaryDirectory(prefix="aitasks-ddp-") as tmp:
        if remote_in:
            from aitasks.runtime.bundle import open_bundle
            from aitasks.runtime.storage import storage_for

            with open_bundle(job.training_set, storage_for(job.training_set), kind="training_set") as (ts_dir, _):
                report = _train(ts_dir, Path(tmp) / "model", tcfg, job, policy, info)
        else:
            report = _train(Path(job.training_set), Path(tmp) / "model", tcfg, job, policy, info)
        if not info.is_main or report is None:
            return None
        out = Path(tmp) / "model"
        if remote_out:
            from aitasks.runtime.bundle import publish_bundle
            from aitasks.runtime.storage import storage_for

            # The report rides in the manifest: the launching step reads it from there.
            meta = {
                **job.meta,
                "loss_curve": [float(h["loss"]) for h in report.history],
                "examples_per_s": report.examples_per_s,
                "train_report": report.model_dump(mode="json"),
            }
            publish_bundle(storage_for(job.output), out, job.output, kind="model", meta=meta)
        else:
            import shutil

            dest = Path(job.output)
            dest.mkdir(parents=True, exist_ok=True)
            for f in out.iterdir():
                shutil.copy2(f, dest / f.name)
            (dest / REPORT_FILE).write_text(report.model_dump_json(), "utf-8")
    return report


def _train(
    ts_dir: Path, out: Path, tcfg: TrainConfig, job: JobSpec, policy: CheckpointPolicy | None, info: DistInfo
) -> TrainReport:
    from aitasks.model_training.recommender import train_recommender

    return train_recommender(ts_dir, out, tcfg, arch=job.arch, checkpoint=policy, distributed=True, save=info.is_main)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m aitasks.model_training.distributed --job JOB.json`` (one worker; started by torchrun)."""
    import argparse

    import torch.distributed as dist

    parser = argparse.ArgumentParser(prog="aitasks.model_training.distributed", description=main.__doc__)
    parser.add_argument("--job", required=True, help="JobSpec JSON file (local path or gs:// URI)")
    args = parser.parse_args(argv)
    if args.job.startswith("gs://"):
        from aitasks.runtime.storage import storage_for

        raw = storage_for(args.job).read_bytes(args.job)
    else:
        raw = Path(args.job).read_bytes()
    job = JobSpec.model_validate_json(raw)
    _init_process_group()
    try:
        run_job(job)
    finally:
        dist.destroy_process_group()
    return 0


def launch_local(
    ts_dir: Path,
    out_dir: Path,
    tcfg: TrainConfig,
    *,
    workers: int,
    arch: dict[str, Any] | None = None,
    checkpoint: CheckpointPolicy | None = None,
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
) -> TrainReport:
    """Train with ``workers`` processes on this machine through torchrun; the model lands in ``out_dir``.

    Runs ``python -m torch.distributed.run --standalone --nproc-per-node workers -m
    aitasks.model_training.distributed --job ...`` and reads rank 0's report.

    Raises:
        InvalidInputError: ``workers`` < 2.
        FatalError: A worker failed (the message carries the tail of torchrun's output).
    """
    from aitasks.model_training.two_tower import TrainReport

    if workers < 2:
        raise InvalidInputError(_TASK, [FieldIssue("workers", f"launch_local needs >= 2 workers, got {workers}")])
    import tempfile

    with tempfile.TemporaryDirectory(prefix="aitasks-ddp-job-") as tmp:
        job = JobSpec(
            training_set=str(ts_dir),
            output=str(out_dir),
            train=tcfg.model_dump(mode="json"),
            arch=dict(arch or {}),
            checkpoint=None if checkpoint is None else checkpoint.model_dump(mode="json"),
        )
        job_path = Path(tmp) / "job.json"
        job_path.write_text(job.model_dump_json(), "utf-8")
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={workers}",
            "-m",
            "aitasks.model_training.distributed",
            "--job",
            str(job_path),
        ]
        proc_env = {**os.environ, **(env or {})}
        if tcfg.device == "cpu":
            proc_env["AITASKS_TRAIN_DEVICE"] = "cpu"
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=proc_env, check=False)
        except subprocess.TimeoutExpired:
            raise FatalError(f"distributed training ({workers} workers) exceeded {timeout_s} s") from None
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-4000:]
            raise FatalError(f"distributed training ({workers} workers) failed, exit {proc.returncode}:\n{tail}")
    report_path = out_dir / REPORT_FILE
    try:
        report = TrainReport.model_validate_json(report_path.read_text("utf-8"))
    except FileNotFoundError:
        raise FatalError(f"rank 0 wrote no report at {report_path}") from None
    report_path.unlink()
    return report


if __name__ == "__main__":
    sys.exit(main())
