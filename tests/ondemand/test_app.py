"""On-demand configuration and the worker's call, without services: what the app promises, what a
message becomes (result envelope, audit, trace, typed failure), the limits a message may ask for."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery.contrib.testing.mocks import TaskMessage
from typer.testing import CliRunner

from aitasks.ondemand.app import OnDemandTaskError, Topology, make_app, ondemand_problems
from aitasks.ondemand.worker import OnDemandRequest, execute, register_tasks
from aitasks.runtime.errors import ConfigurationError
from aitasks.runtime.settings import Settings
from tests.ondemand import worker_tasks

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_the_app_speaks_json_only_and_acknowledges_late() -> None:
    conf = make_app(Settings(ondemand_queue="q1")).conf
    assert conf.accept_content == ["json"] and conf.result_accept_content == ["json"]
    assert conf.task_serializer == conf.result_serializer == conf.event_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.task_default_queue == "q1" and not conf.task_create_missing_queues
    assert conf.broker_transport_options["confirm_publish"] is True
    assert conf.task_soft_time_limit < conf.task_time_limit
    assert conf.worker_consumer == "aitasks.ondemand.worker:OnDemandConsumer"


def test_the_queue_is_a_quorum_queue_that_dead_letters_into_its_own_dead_queue() -> None:
    topo = Topology("work", delivery_limit=3)
    work, dead = topo.work_queue(), topo.dead_letter_queue()
    assert work.queue_arguments == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 3,
        "x-dead-letter-exchange": "work.dlx",
        "x-dead-letter-routing-key": "work.dead",
    }
    assert work.durable and dead.durable and dead.name == "work.dead" and dead.exchange.name == "work.dlx"
    assert dead.routing_key == "work.dead"


def test_production_refuses_the_localhost_broker_and_backend() -> None:
    prod = Settings(env="production")
    problems = ondemand_problems(prod)
    assert any("BROKER_URL" in p for p in problems) and any("RESULT_BACKEND" in p for p in problems)
    assert not any("guest" in p for p in problems), "no credential in the message"
    with pytest.raises(ConfigurationError):
        make_app(prod)
    ok = Settings(
        env="production",
        ondemand_broker_url="amqps://aitasks:pw@rabbitmq.rabbitmq:5671/aitasks",
        ondemand_result_backend="redis://:pw@feast-redis.aitasks:6379/1",
    )
    assert ondemand_problems(ok) == []
    assert "pw" not in repr(ok), "the URLs are secrets"


def test_limits_must_be_ordered() -> None:
    assert ondemand_problems(Settings(ondemand_soft_time_limit_s=60, ondemand_time_limit_s=30))


def test_a_message_may_ask_for_shorter_limits_never_longer() -> None:
    app = make_app(Settings(ondemand_soft_time_limit_s=10, ondemand_time_limit_s=20))
    register_tasks(app, [worker_tasks.echo_task.name])
    task = app.tasks[worker_tasks.echo_task.name]

    def limits(**options: Any) -> Any:
        message = TaskMessage(task.name, kwargs={"params": {"x": 1}}, **options)
        return tuple(OnDemandRequest(message, app=app, task=task).time_limits)

    assert limits() == (20, 10)
    assert limits(timelimit=(5, 2)) == (5, 2)
    assert limits(timelimit=(3600, 3000)) == (20, 10)
    assert limits(timelimit=(None, 4)) == (20, 4)
    assert limits(timelimit=(5, None)) == (5, 4.5), "a shorter hard limit brings the soft one down"


def test_the_failure_survives_the_json_result_backend() -> None:
    backend = make_app(Settings()).backend
    stored = backend.prepare_exception(OnDemandTaskError("invalid_input", "x: not an integer"))
    back = backend.exception_to_python(stored)
    assert isinstance(back, OnDemandTaskError) and (back.kind, back.message) == ("invalid_input", "x: not an integer")


def _request(task_id: str, **headers: str) -> Any:
    return SimpleNamespace(id=task_id, timelimit=None, headers=headers, **headers)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AITASKS_TEST_ONDEMAND_DIR", str(tmp_path))
    return make_app(Settings(storage_root=str(tmp_path / "store"), actor="worker"))


def test_a_message_runs_the_registered_task_through_the_runtime(app: Any) -> None:
    from aitasks.runtime.audit import audit_from_settings

    headers = {"traceparent": TRACEPARENT, "aitasks_submitter": "bob", "aitasks_submitted_at": "1"}
    out = execute(app, "test.ondemand.echo", (), {"params": {"x": 4}}, _request("t-1", **headers))
    assert out == {
        "task": "test.ondemand.echo",
        "version": "1.0.0",
        "trace_id": TRACEPARENT[3:35],
        "result": {"y": 8, "label": "echo"},
    }
    (rec,) = [r for r in audit_from_settings(app.aitasks_settings).records() if r["status"] == "succeeded"]
    assert (rec["run_id"], rec["pipeline"], rec["step"], rec["submitter"]) == (
        "t-1",
        "ondemand",
        "test.ondemand.echo",
        "bob",
    )
    assert rec["trace_id"] == TRACEPARENT[3:35]
    # No (or a broken) traceparent: the trace id is derived from the run id, like a pipeline step's.
    again = execute(app, "test.ondemand.echo", (), {"params": {"x": 5}}, _request("t-2", traceparent="junk"))
    from aitasks.runtime.telemetry import derived_traceparent

    assert again["trace_id"] == derived_traceparent("t-2")[3:35]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1,), {}), ((), {}), ((), {"params": {"x": 1}, "other": 2}), ((), {"params": [1]})],
)
def test_a_message_of_the_wrong_shape_is_refused(app: Any, args: tuple, kwargs: dict) -> None:
    with pytest.raises(OnDemandTaskError) as caught:
        execute(app, "test.ondemand.echo", args, kwargs, _request("t-3"))
    assert caught.value.kind == "invalid_message"


def test_failures_carry_their_kind_and_no_secret(app: Any) -> None:
    with pytest.raises(OnDemandTaskError) as caught:
        execute(app, "test.ondemand.echo", (), {"params": {"x": "two"}}, _request("t-4"))
    assert caught.value.kind == "invalid_input" and "x" in caught.value.message

    with pytest.raises(OnDemandTaskError) as caught:
        execute(app, "test.ondemand.secret", (), {"params": {"token": "hunter2-s3cr3t"}}, _request("t-5"))
    assert caught.value.kind == "fatal"
    assert "upstream refused token" in caught.value.message and "hunter2-s3cr3t" not in caught.value.message


def test_the_cli_has_worker_and_submit() -> None:
    from aitasks.cli import app as cli

    runner = CliRunner()
    for command in ("worker", "submit"):
        result = runner.invoke(cli, [command, "--help"])
        assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["submit", "test.ondemand.echo", "--input", "-"], input="{not json")
    assert result.exit_code == 2 and "not valid JSON" in result.output
