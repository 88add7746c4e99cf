"""Upload, schedules and runs against a fake KFP v2beta1 API server over real HTTP, with the real kfp.Client."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipelines import kfp_api
from pipelines.cli import app, compile_pipeline
from tests.fakes.kfp_server import FakeKfpServer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

TOKEN = "s3cr3t-token-value"


@pytest.fixture(autouse=True)
def _no_ambient_auth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("KFP_TOKEN", "AITASKS_KFP_HOST", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "GITHUB_ACTIONS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(kfp_api, "SA_TOKEN_PATH", tmp_path / "no-sa-token")


@pytest.fixture
def server() -> Iterator[FakeKfpServer]:
    with FakeKfpServer() as fake:
        yield fake


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compiled")
    for name in ("reco-training", "audio-analysis"):
        compile_pipeline(name, out)
    return out


def _uploaded(server: FakeKfpServer, packages: Path) -> Any:
    client = kfp_api.client_for(server.url)
    for name in ("reco-training", "audio-analysis"):
        kfp_api.upload(client, name, packages / f"{name}.yaml", git_revision="abc123")
    return client


def _spec(**overrides: Any) -> kfp_api.ScheduleSpec:
    reco = {"name": "aitasks-reco", "pipeline": "reco-training", "cron": "0 0 3 * * *", "experiment": "reco"}
    audio = {"name": "aitasks-audio", "pipeline": "audio-analysis", "cron": "0 15 * * * *", "experiment": "audio"}
    reco.update(overrides.get("reco", {}))
    audio.update(overrides.get("audio", {}))
    items = [s for s in (reco, audio) if s.get("name")]
    return kfp_api.parse_schedules({"schedules": items})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- upload ----------------------------------------------------------------------------------------


def test_upload_creates_then_versions_then_noops(server: FakeKfpServer, packages: Path, tmp_path: Path) -> None:
    client = kfp_api.client_for(server.url)
    package = packages / "audio-analysis.yaml"

    first = kfp_api.upload(client, "audio-analysis", package, git_revision="1111111111111111")
    assert first.created
    assert server.state.pipelines[first.pipeline_id]["display_name"] == "audio-analysis"

    # Identical content again: nothing is uploaded.
    again = kfp_api.upload(client, "audio-analysis", package, git_revision="2222222222222222")
    assert again == (first.pipeline_id, first.version_id, False)
    assert len(server.calls("POST", "/pipelines/upload")) == 1

    changed = tmp_path / "audio-analysis.yaml"
    changed.write_bytes(package.read_bytes() + b"\n# changed\n")
    second = kfp_api.upload(client, "audio-analysis", changed, git_revision="3333333333333333ffff")
    assert second.created and second.pipeline_id == first.pipeline_id
    name = server.state.versions[second.version_id]["name"]
    assert name == f"{kfp_api.content_hash(changed)[:12]}-333333333333"

    third = kfp_api.upload(client, "audio-analysis", changed, git_revision="4444")
    assert third == (first.pipeline_id, second.version_id, False)
    assert len(server.calls("POST", "/pipelines/upload_version")) == 1
    assert len(server.state.versions) == 2


def test_concurrent_identical_upload_is_a_noop(
    server: FakeKfpServer, packages: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = kfp_api.client_for(server.url)
    kfp_api.upload(client, "audio-analysis", packages / "audio-analysis.yaml", git_revision="a")
    changed = tmp_path / "audio-analysis.yaml"
    changed.write_bytes((packages / "audio-analysis.yaml").read_bytes() + b"\n# changed\n")
    winner = kfp_api.upload(client, "audio-analysis", changed, git_revision="b")
    # This job's scan ran before the other job's upload landed: it sees no match, uploads, gets 409.
    real = kfp_api._same_content
    scans: list[str | None] = []

    def late_scan(*args: Any) -> str | None:
        scans.append(real(*args) if scans else None)
        return scans[-1]

    monkeypatch.setattr(kfp_api, "_same_content", late_scan)
    loser = kfp_api.upload(client, "audio-analysis", changed, git_revision="b")
    assert loser == (winner.pipeline_id, winner.version_id, False)
    assert len(server.calls("POST", "/pipelines/upload_version")) == 2  # the second one answered 409


def test_cli_upload_all(server: FakeKfpServer) -> None:
    result = CliRunner().invoke(app, ["upload", "--all", "--host", server.url, "--git-revision", "c0ffee"])
    assert result.exit_code == 0, result.output
    names = sorted(p["display_name"] for p in server.state.pipelines.values())
    assert names == [
        "audio-analysis",
        "content-generation",
        "data-pipeline",
        "reco-refresh",
        "reco-training",
        "reco-tuning",
    ]
    result = CliRunner().invoke(app, ["upload", "--all", "--host", server.url, "--git-revision", "c0ffee"])
    assert result.exit_code == 0 and result.output.count(": unchanged") == 6
    result = CliRunner().invoke(app, ["upload", "--host", server.url])
    assert result.exit_code == 2 and "NAME or --all" in result.output


def test_bearer_token_reaches_server(server: FakeKfpServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    kfp_api.client_for(server.url, token=TOKEN)
    assert server.requests
    assert {r.headers.get("authorization") for r in server.requests} == {f"Bearer {TOKEN}"}

    server.requests.clear()
    monkeypatch.setenv("KFP_TOKEN", "from-env")
    kfp_api.client_for(server.url)
    assert server.requests[-1].headers.get("authorization") == "Bearer from-env"

    server.requests.clear()
    monkeypatch.delenv("KFP_TOKEN")
    sa_token = tmp_path / "token"
    sa_token.write_text("from-service-account\n")
    monkeypatch.setattr(kfp_api, "SA_TOKEN_PATH", sa_token)
    kfp_api.client_for(server.url)
    assert server.requests[-1].headers.get("authorization") == "Bearer from-service-account"


def test_cli_upload_sends_token_and_never_prints_it(packages: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def upload(name: str, host: str) -> Any:
        opts = ["--host", host, "--git-revision", "deadbeef", "--package-dir", str(packages)]
        return CliRunner().invoke(app, ["upload", name, *opts])

    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    with FakeKfpServer(required_token=TOKEN) as server:
        for name in ("reco-training", "audio-analysis"):
            result = upload(name, server.url)
            assert result.exit_code == 0, result.output
            assert f"{name}: uploaded" in result.output
            assert TOKEN not in result.output
        result = upload("reco-training", server.url)
        assert result.exit_code == 0 and "reco-training: unchanged" in result.output
        assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in server.requests)

    monkeypatch.setenv("KFP_TOKEN", "wrong-" + TOKEN)
    with FakeKfpServer(required_token=TOKEN) as server:
        result = upload("reco-training", server.url)
    assert result.exit_code == 1
    assert "401" in result.output and TOKEN not in result.output
    assert "Traceback" not in result.output


# --- schedules -------------------------------------------------------------------------------------


def test_schedule_apply_is_idempotent(server: FakeKfpServer, packages: Path) -> None:
    client = _uploaded(server, packages)

    report = kfp_api.apply_schedules(client, _spec())
    assert sorted(report.created) == ["aitasks-audio", "aitasks-reco"]
    runs = {r["display_name"]: r for r in server.state.recurring_runs.values()}
    assert runs["aitasks-reco"]["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert runs["aitasks-reco"]["no_catchup"] is True
    assert runs["aitasks-reco"]["service_account"] == kfp_api.RUN_SERVICE_ACCOUNT
    context = runs["aitasks-reco"]["runtime_config"]["parameters"]["run_context"]
    assert context["submitter"] == "schedule:aitasks-reco"
    assert context["pipeline_version"], "the version reaches the audit"
    assert context["git_revision"] == "abc123"

    before = dict(server.state.recurring_runs)
    mutations = len(server.mutations())
    report = kfp_api.apply_schedules(client, _spec())
    assert sorted(report.unchanged) == ["aitasks-audio", "aitasks-reco"]
    assert not report.changed
    assert server.state.recurring_runs == before
    assert len(server.mutations()) == mutations

    report = kfp_api.apply_schedules(client, _spec(audio={"cron": "0 45 * * * *"}))
    assert report.recreated == ["aitasks-audio"] and report.unchanged == ["aitasks-reco"]
    assert report.changes == {"aitasks-audio": ["cron"]}
    crons = {r["display_name"]: r["trigger"]["cron_schedule"]["cron"] for r in server.state.recurring_runs.values()}
    assert crons == {"aitasks-reco": "0 0 3 * * *", "aitasks-audio": "0 45 * * * *"}
    assert runs["aitasks-reco"]["recurring_run_id"] in server.state.recurring_runs

    report = kfp_api.apply_schedules(client, _spec(audio={"name": None}))
    assert report.deleted == ["aitasks-audio"] and report.unchanged == ["aitasks-reco"]
    assert [r["display_name"] for r in server.state.recurring_runs.values()] == ["aitasks-reco"]


def test_schedule_apply_leaves_unmanaged_and_follows_new_versions(
    server: FakeKfpServer, packages: Path, tmp_path: Path
) -> None:
    client = _uploaded(server, packages)
    experiment = client.create_experiment("other")
    pid = client.get_pipeline_id("reco-training")
    vid = next(iter(server.state.versions))
    client.create_recurring_run(
        experiment.experiment_id, "someone-elses", cron_expression="0 0 1 * * *", pipeline_id=pid, version_id=vid
    )
    kfp_api.apply_schedules(client, _spec())

    changed = tmp_path / "reco-training.yaml"
    changed.write_bytes((packages / "reco-training.yaml").read_bytes() + b"\n# v2\n")
    kfp_api.upload(client, "reco-training", changed, git_revision="feedface")
    report = kfp_api.apply_schedules(client, _spec())
    assert report.recreated == ["aitasks-reco"] and report.changes["aitasks-reco"] == [
        "parameters",
        "pipeline_version_id",
    ]
    names = sorted(r["display_name"] for r in server.state.recurring_runs.values())
    assert names == ["aitasks-audio", "aitasks-reco", "someone-elses"]
    reco = next(r for r in server.state.recurring_runs.values() if r["display_name"] == "aitasks-reco")
    assert reco["runtime_config"]["parameters"]["run_context"]["git_revision"] == "feedface"


def test_schedule_settings_round_trip(server: FakeKfpServer, packages: Path) -> None:
    client = _uploaded(server, packages)
    reco = {
        "catchup": True,
        "enabled": False,
        "max_concurrency": 3,
        "parameters": {
            "training": {"epochs": 2, "lr": 0.01, "logq_correction": False},
            "gpu_node_selector": {"b": "1", "a": "2"},
        },
    }
    assert kfp_api.apply_schedules(client, _spec(reco=reco)).created
    (run,) = [r for r in server.state.recurring_runs.values() if r["display_name"] == "aitasks-reco"]
    assert run["no_catchup"] is False and run["mode"] == "DISABLE" and run["max_concurrency"] == "3"
    report = kfp_api.apply_schedules(client, _spec(reco=reco))
    assert sorted(report.unchanged) == ["aitasks-audio", "aitasks-reco"]
    report = kfp_api.apply_schedules(client, _spec(reco={**reco, "enabled": True}))
    assert report.changes == {"aitasks-reco": ["enabled"]}


def test_schedule_dry_run_changes_nothing(server: FakeKfpServer, packages: Path, tmp_path: Path) -> None:
    client = _uploaded(server, packages)
    mutations = len(server.mutations())
    report = kfp_api.apply_schedules(client, _spec(), dry_run=True)
    assert sorted(report.created) == ["aitasks-audio", "aitasks-reco"]
    assert len(server.mutations()) == mutations
    assert not server.state.recurring_runs and not server.state.experiments

    kfp_api.apply_schedules(client, _spec())
    mutations = len(server.mutations())
    report = kfp_api.apply_schedules(client, _spec(reco={"max_concurrency": 2}, audio={"name": None}), dry_run=True)
    assert report.recreated == ["aitasks-reco"] and report.deleted == ["aitasks-audio"]
    assert len(server.mutations()) == mutations

    spec_file = tmp_path / "schedules.yaml"
    spec_file.write_text(
        "schedules:\n  - {name: aitasks-reco, pipeline: reco-training, cron: '0 0 4 * * *', experiment: reco}\n"
    )
    result = CliRunner().invoke(app, ["schedule", "apply", "--file", str(spec_file), "--host", server.url, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would recreate aitasks-reco (cron changed)" in result.output
    assert "would delete aitasks-audio" in result.output
    assert len(server.mutations()) == mutations

    result = CliRunner().invoke(app, ["schedule", "apply", "--file", str(spec_file), "--host", server.url])
    assert result.exit_code == 0, result.output
    assert "0 created, 1 recreated, 0 unchanged, 1 deleted" in result.output


def test_schedule_apply_plans_before_writing(server: FakeKfpServer, packages: Path) -> None:
    client = _uploaded(server, packages)
    kfp_api.apply_schedules(client, _spec())
    mutations = len(server.mutations())
    with pytest.raises(kfp_api.KfpApiError, match="'audio-analysis' has no version 'nope'"):
        kfp_api.apply_schedules(client, _spec(reco={"cron": "0 0 5 * * *"}, audio={"version": "pinned:nope"}))
    with pytest.raises(kfp_api.KfpApiError, match="'reco-refresh' is not uploaded"):
        kfp_api.apply_schedules(client, _spec(audio={"name": "aitasks-refresh", "pipeline": "reco-refresh"}))
    assert len(server.mutations()) == mutations


def test_shipped_schedules_file() -> None:
    spec = kfp_api.load_schedules(kfp_api.DEFAULT_SCHEDULES)
    by_pipeline = {s.pipeline: s for s in spec.schedules}
    assert set(by_pipeline) == {"reco-training", "reco-refresh", "audio-analysis"}
    assert all(s.name.startswith(kfp_api.MANAGED_PREFIX) for s in spec.schedules)
    assert by_pipeline["reco-training"].cron.split()[3:] == ["*", "*", "*"]  # daily
    assert by_pipeline["audio-analysis"].cron.split()[2:] == ["*", "*", "*", "*"]  # hourly
    assert by_pipeline["reco-refresh"].cron.split()[2:] == ["*", "*", "*", "*"]  # hourly
    assert by_pipeline["reco-refresh"].max_concurrency == 1  # each refresh starts from the last one's version
    from pipelines.registry import pipelines

    assert set(by_pipeline) <= set(pipelines()), "every scheduled pipeline is registered (compiled, uploaded)"


@pytest.mark.parametrize(
    ("cron", "needle"),
    [
        ("0 3 * * *", "5 fields; KFP needs 6"),
        ("0 0 25 * * *", "not a valid hours"),
        ("0 0 3 ? * MON-XYZ", "'XYZ' is not a valid day of week"),
        ("0 */0 * * * *", "bad step"),
    ],
)
def test_invalid_cron_is_a_clear_error(cron: str, needle: str, tmp_path: Path) -> None:
    with pytest.raises(kfp_api.SpecError, match="aitasks-reco: cron") as info:
        _spec(reco={"cron": cron})
    assert needle in str(info.value)

    spec_file = tmp_path / "schedules.yaml"
    spec_file.write_text(f"schedules:\n  - {{name: aitasks-reco, pipeline: reco-training, cron: '{cron}'}}\n")
    result = CliRunner().invoke(app, ["schedule", "apply", "--file", str(spec_file), "--host", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert needle in result.output and "Traceback" not in result.output


def test_valid_crons_pass() -> None:
    for cron in ("0 0 3 * * *", "0 15 * * * *", "0 0 9 ? * MON-FRI", "*/30 0,30 1-5 1 JAN-DEC 0"):
        assert kfp_api.validate_cron(cron) == cron


# --- runs ------------------------------------------------------------------------------------------


def test_submit_run_passes_submitter_and_revision(server: FakeKfpServer, packages: Path) -> None:
    client = _uploaded(server, packages)
    sub = kfp_api.submit_run(
        client,
        "audio-analysis",
        None,
        {"analysis": {"shards": 2}},
        "adhoc",
        submitter="user:alice",
        git_revision="abc123",
    )
    run = server.state.runs[sub.run_id]
    assert run["runtime_config"]["parameters"] == {
        "analysis": {"shards": 2},
        "run_context": {
            "storage_root": "",
            "submitter": "user:alice",
            "git_revision": "abc123",
            "pipeline_version": sub.pipeline_version,
            "traceparent": "",
        },
    }
    assert run["pipeline_version_reference"]["pipeline_id"] == client.get_pipeline_id("audio-analysis")
    assert run["service_account"] == kfp_api.RUN_SERVICE_ACCOUNT, "steps run as the runner account"
    assert sub.url == f"{server.url}/#/runs/details/{sub.run_id}"

    with pytest.raises(kfp_api.SpecError, match="--submitter"):
        kfp_api.submit_run(client, "audio-analysis", None, {"submitter": "x"}, "adhoc", submitter="y")
    with pytest.raises(kfp_api.SpecError, match="--submitter"):
        kfp_api.submit_run(client, "audio-analysis", None, {"run_context": {"submitter": "x"}}, "adhoc", submitter="y")
    with pytest.raises(kfp_api.SpecError, match="unknown key"):
        kfp_api.submit_run(
            client, "audio-analysis", None, {"run_context": {"storage_rot": "x"}}, "adhoc", submitter="y"
        )
    # A storage root given in the run context is kept, the rest is filled in.
    sub = kfp_api.submit_run(
        client, "audio-analysis", None, {"run_context": {"storage_root": "gs://b/r"}}, "adhoc", submitter="y"
    )
    ctx = server.state.runs[sub.run_id]["runtime_config"]["parameters"]["run_context"]
    assert ctx["storage_root"] == "gs://b/r" and ctx["submitter"] == "y"
    with pytest.raises(kfp_api.KfpApiError, match="no version 'nope'"):
        kfp_api.submit_run(client, "audio-analysis", "pinned:nope", {}, "adhoc", submitter="y")


def test_cli_run_prints_link(server: FakeKfpServer, packages: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _uploaded(server, packages)
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    result = CliRunner().invoke(
        app,
        ["run", "reco-training", "--host", server.url, "-p", 'training={"epochs": 1}', "--submitter", "ci:bot"],
    )
    assert result.exit_code == 0, result.output
    (run,) = server.state.runs.values()
    assert f"{server.url}/#/runs/details/{run['run_id']}" in result.output
    params = run["runtime_config"]["parameters"]
    assert params["training"] == {"epochs": 1} and params["run_context"]["submitter"] == "ci:bot"
    assert params["run_context"]["git_revision"] == "abc123"  # the revision the (first) version was uploaded from
    assert TOKEN not in result.output

    # A bad group key, or a knob of the old flat form, is refused before anything is submitted.
    for bad, words in (
        ('training={"epoch": 1}', "training.epoch: unknown key"),
        ("epochs=1", "it is now training.epochs"),
        ("hnsw_m=32", "it is now index.m"),
    ):
        result = CliRunner().invoke(app, ["run", "reco-training", "--host", server.url, "-p", bad])
        assert result.exit_code == 2, result.output
        assert words in " ".join(result.output.replace("│", " ").split()), result.output
    assert len(server.state.runs) == 1

    result = CliRunner().invoke(app, ["run", "data-pipeline", "--host", server.url])
    assert result.exit_code == 1
    assert "'data-pipeline' is not uploaded" in result.output


# --- errors ----------------------------------------------------------------------------------------


def test_server_down_is_a_clear_error(packages: Path) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(kfp_api.KfpApiError, match="cannot reach the KFP API"):
        kfp_api.client_for(dead)
    for args in (
        ["upload", "reco-training", "--host", dead, "--git-revision", "x", "--package-dir", str(packages)],
        ["schedule", "apply", "--host", dead],
        ["run", "reco-training", "--host", dead],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "cannot reach the KFP API" in lines[0], result.output


def test_no_host_is_a_clear_error() -> None:
    with pytest.raises(kfp_api.SpecError, match="AITASKS_KFP_HOST"):
        kfp_api.client_for(None)
