"""Resumable checkpoints: a killed run resumes to the weights of an uninterrupted one; corruption is an error.

Checkpoints are safetensors + JSON in the run's storage, the pointer (LATEST.json) written last
(aitasks.model_training.checkpoint).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aitasks.model_training import recommender as rec
from aitasks.model_training.checkpoint import CheckpointPolicy, CheckpointStore
from aitasks.model_training.two_tower import TrainConfig
from aitasks.runtime.errors import DataFormatError, InvalidInputError
from tests.model_training._small_world import small_training_set

TCFG = TrainConfig(epochs=3, batch_size=512, seed=5, num_threads=1, device="cpu")
ROOT = Path(__file__).resolve().parents[2]

#: Runs training with checkpoints and stops dead (SIGSTOP-free: it sleeps) right after the first one, so the
#: test can SIGKILL it at a known point, mid-run.
CHILD = """
import sys, time
from pathlib import Path
from aitasks.model_training import checkpoint as ck
from aitasks.model_training import recommender as rec
from aitasks.model_training.two_tower import TrainConfig

save = ck.CheckpointStore.save

def save_then_hang(self, state, tensors):
    uri = save(self, state, tensors)
    print("CHECKPOINT", state.step, flush=True)
    time.sleep(600)
    return uri

ck.CheckpointStore.save = save_then_hang
rec.train_recommender(
    Path(sys.argv[1]), Path(sys.argv[2]), TrainConfig.model_validate_json(sys.argv[3]),
    checkpoint=ck.CheckpointPolicy.model_validate_json(sys.argv[4]),
)
print("FINISHED", flush=True)
"""


@pytest.fixture(scope="module")
def small_ts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_training_set(tmp_path_factory.mktemp("ckpt"))


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def test_a_killed_run_resumes_to_the_uninterrupted_weights(small_ts: Path, tmp_path: Path) -> None:
    policy = CheckpointPolicy(uri=str(tmp_path / "ckpt"), every_steps=7)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    args = [str(small_ts), str(tmp_path / "killed"), TCFG.model_dump_json(), policy.model_dump_json()]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("CHECKPOINT"), line + (child.stderr.read() if child.stderr else "")
        step = int(line.split()[1])
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert step == 7 and not (tmp_path / "killed" / "model.safetensors").exists()

    resumed = rec.train_recommender(small_ts, tmp_path / "resumed", TCFG, checkpoint=policy)
    straight = rec.train_recommender(small_ts, tmp_path / "straight", TCFG)
    assert resumed.resumed_from_step == 7 and straight.resumed_from_step is None
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history], rel=1e-9)
    # Checkpoints kept: the newest two; nothing pickled.
    store = CheckpointStore(policy)
    dirs = sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith("step-"))
    assert len(dirs) == 2 and store.latest_step() == int(dirs[-1][5:])
    files = {p.name for p in (tmp_path / "ckpt").rglob("*") if p.is_file()}
    assert files == {"LATEST.json", "state.json", "state.safetensors"}


@pytest.fixture
def one_checkpoint(small_ts: Path, tmp_path: Path) -> CheckpointPolicy:
    """A finished 1-epoch run with a checkpoint every 10 steps."""
    policy = CheckpointPolicy(uri=str(tmp_path / "ckpt"), every_steps=10)
    rec.train_recommender(small_ts, tmp_path / "m", TCFG.model_copy(update={"epochs": 1}), checkpoint=policy)
    return policy


def _latest_dir(policy: CheckpointPolicy) -> Path:
    latest = json.loads((Path(policy.uri) / "LATEST.json").read_text())
    return Path(policy.uri) / latest["dir"]


def test_a_corrupt_checkpoint_is_an_error_naming_the_file(
    small_ts: Path, tmp_path: Path, one_checkpoint: CheckpointPolicy
) -> None:
    tensors = _latest_dir(one_checkpoint) / "state.safetensors"
    raw = bytearray(tensors.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    tensors.write_bytes(bytes(raw))
    one_epoch = TCFG.model_copy(update={"epochs": 1})
    with pytest.raises(DataFormatError, match=r"state\.safetensors.*corrupt"):
        rec.train_recommender(small_ts, tmp_path / "again", one_epoch, checkpoint=one_checkpoint)


def test_a_corrupt_pointer_is_an_error_not_a_fresh_start(
    small_ts: Path, tmp_path: Path, one_checkpoint: CheckpointPolicy
) -> None:
    (Path(one_checkpoint.uri) / "LATEST.json").write_text('{"format": "aitasks.train_checkpoint", "step": ')
    with pytest.raises(DataFormatError, match=r"LATEST\.json.*corrupt checkpoint pointer"):
        rec.train_recommender(small_ts, tmp_path / "again", TCFG, checkpoint=one_checkpoint)


def test_a_truncated_state_file_is_an_error(small_ts: Path, tmp_path: Path, one_checkpoint: CheckpointPolicy) -> None:
    state = _latest_dir(one_checkpoint) / "state.json"
    state.write_bytes(state.read_bytes()[:-20])
    with pytest.raises(DataFormatError, match=r"state\.json"):
        rec.train_recommender(
            small_ts, tmp_path / "again", TCFG.model_copy(update={"epochs": 1}), checkpoint=one_checkpoint
        )


def test_a_checkpoint_of_another_run_is_refused(
    small_ts: Path, tmp_path: Path, one_checkpoint: CheckpointPolicy
) -> None:
    other = TCFG.model_copy(update={"epochs": 1, "seed": 6})
    with pytest.raises(InvalidInputError, match="different run"):
        rec.train_recommender(small_ts, tmp_path / "again", other, checkpoint=one_checkpoint)


def test_resume_off_refuses_to_overwrite(small_ts: Path, tmp_path: Path, one_checkpoint: CheckpointPolicy) -> None:
    off = one_checkpoint.model_copy(update={"resume": False})
    with pytest.raises(InvalidInputError, match="resume is off"):
        rec.train_recommender(small_ts, tmp_path / "again", TCFG.model_copy(update={"epochs": 1}), checkpoint=off)


def test_files_without_a_pointer_are_no_checkpoint(small_ts: Path, tmp_path: Path) -> None:
    """A writer killed before LATEST.json moved leaves files that nothing reads: the run starts fresh."""
    policy = CheckpointPolicy(uri=str(tmp_path / "ckpt"), every_steps=10)
    partial = tmp_path / "ckpt" / "step-000000010"
    partial.mkdir(parents=True)
    (partial / "state.safetensors").write_bytes(b"half a file")
    report = rec.train_recommender(small_ts, tmp_path / "m", TCFG.model_copy(update={"epochs": 1}), checkpoint=policy)
    assert report.resumed_from_step is None and CheckpointStore(policy).latest_step() is not None


def test_a_finished_run_resumes_to_the_same_model_without_training(
    small_ts: Path, tmp_path: Path, one_checkpoint: CheckpointPolicy
) -> None:
    """A retry after the last checkpoint (the pod died while publishing) trains nothing, saves the same model."""
    one_epoch = TCFG.model_copy(update={"epochs": 1})
    again = rec.train_recommender(small_ts, tmp_path / "again", one_epoch, checkpoint=one_checkpoint)
    assert again.resumed_from_step == CheckpointStore(one_checkpoint).latest_step()
    first, second = _weights(tmp_path / "m"), _weights(tmp_path / "again")
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow  # the task runtime's imports plus a training: ~30 s on 2 loaded cores
def test_the_task_records_device_and_precision_and_clears_its_checkpoints(captured, small_ts: Path) -> None:  # type: ignore[no-untyped-def]
    """model.train checkpoints into the call's work directory, removes them once the model is published, and
    records the device and precision it used (result, log, and the bundle's params for the MLflow run)."""
    from aitasks.model_training.tasks import train_model_task
    from aitasks.runtime.bundle import publish_bundle
    from aitasks.runtime.storage import LocalStorage

    ts_uri = publish_bundle(LocalStorage(), small_ts, str(captured.root / "store" / "ts"), kind="training_set")
    res = train_model_task(
        {"training_set_uri": ts_uri, "epochs": 1, "batch_size": 512, "checkpoint_every_steps": 5, "device": "cpu"},
        runtime=captured.rt,
    )
    assert (res.device, res.precision, res.world_size, res.resumed_from_step) == ("cpu", "fp32", 1, None)
    assert not list((captured.root / "store").rglob("LATEST.json"))
    assert not [p for p in (captured.root / "store").rglob("checkpoints") if p.is_dir()]
    log = captured.log_text()
    assert '"precision": "fp32"' in log and '"device": "cpu"' in log
    from aitasks.runtime.bundle import read_manifest

    params = read_manifest(res.model_uri, kind="model")["meta"]["params"]
    assert (params["device_used"], params["precision_used"], params["world_size"]) == ("cpu", "fp32", 1)
