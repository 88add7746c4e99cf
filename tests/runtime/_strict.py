"""A task with nested and list inputs (registered as ``test.nested``), for the strict-input tests."""

from __future__ import annotations

from pydantic import Field

from aitasks.runtime.task import TaskContext, TaskModel, ai_task


class Sizes(TaskModel):
    users: int
    ratio: float = 0.5
    enabled: bool = True


class NestedParams(TaskModel):
    sizes: Sizes
    counts: list[int] = Field(default_factory=list)


class NestedResult(TaskModel):
    total: int


@ai_task(name="test.nested", version="1.0.0")
def nested_task(params: NestedParams, ctx: TaskContext) -> NestedResult:
    """Add the numbers of its inputs.

    EN: Adds the user count and the counts (a test of strict inputs).
    FR: Additionne le nombre d'utilisateurs et les comptes (test des entrées strictes).
    DE: Addiert Nutzerzahl und Zählwerte (Test strikter Eingaben).
    """
    return NestedResult(total=params.sizes.users + sum(params.counts))
