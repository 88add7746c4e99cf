"""Tasks used by the runtime tests (registered under a ``test.`` prefix)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from aitasks.runtime.errors import FatalError, ServiceUnavailableError
from aitasks.runtime.retry import RetryPolicy
from aitasks.runtime.task import InputArtifact, OutputArtifact, TaskContext, TaskModel, ai_task

CALLS: dict[str, int] = {}


class ScaleParams(TaskModel):
    source: InputArtifact
    factor: float = Field(gt=0)
    label: str = "default"
    api_token: SecretStr | None = None
    fail_times: int = Field(default=0, ge=0)
    fatal: bool = False


class ScaleResult(TaskModel):
    output: OutputArtifact
    total: float


@ai_task(name="test.scale", version="1.0.0", retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.1))
def scale_task(params: ScaleParams, ctx: TaskContext) -> ScaleResult:
    """Scale the numbers of a file.

    EN: Multiplies every number in the source file by a factor.
    FR: Multiplie chaque nombre du fichier source par un facteur.
    DE: Multipliziert jede Zahl der Quelldatei mit einem Faktor.
    """
    n = CALLS.get(params.label, 0) + 1
    CALLS[params.label] = n
    if params.api_token is not None:
        # A careless task that puts the secret into a log line and an error message.
        ctx.log.info("calling service", auth=f"Bearer {params.api_token.get_secret_value()}")
    if params.fatal:
        raise FatalError(f"cannot work with token {params.api_token.get_secret_value() if params.api_token else ''}")
    if n <= params.fail_times:
        raise ServiceUnavailableError(f"service down (attempt {n})")
    numbers = [float(x) for x in Path(params.source).read_text().split()]
    out = ctx.output_uri("scaled.txt")
    with ctx.publish(out) as p:
        p.write_text(" ".join(str(x * params.factor) for x in numbers))
    return ScaleResult(output=out, total=sum(numbers) * params.factor)


#: Outside state read by ``test.stateful`` (stands in for a registry alias).
WORLD: dict[str, int] = {"champion": 1}


class StatefulParams(TaskModel):
    x: int


class StatefulResult(TaskModel):
    seen_champion: int


@ai_task(name="test.stateful", version="1.0.0", state=lambda params, rt: {"champion": WORLD["champion"]})
def stateful_task(params: StatefulParams, ctx: TaskContext) -> StatefulResult:
    """Return the outside state it ran against.

    EN: Reports the champion it saw.
    FR: Indique le champion vu.
    DE: Meldet den gesehenen Champion.
    """
    CALLS["stateful"] = CALLS.get("stateful", 0) + 1
    return StatefulResult(seen_champion=WORLD["champion"])
