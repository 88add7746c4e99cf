"""PrometheusRule and dashboard expressions parse and use only what src/aitasks exports.

promtool is used when it is on PATH; otherwise the expressions are checked by a small tokenizer:
balanced brackets, valid label matchers, and every metric name is one that
src/aitasks/runtime/telemetry.py registers, one the Pushgateway adds for each pushed group, or a
recording rule of the same PrometheusRule. And the alerts stay true under the push grouping
({job, pipeline, step}, each push replacing the step's previous group): no run_id anywhere, every
freshness alert also fires on absent().
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.manifests._k8s import ROOT

TELEMETRY = ROOT / "src" / "aitasks" / "runtime" / "telemetry.py"
#: Every module that registers metrics: the task runtime's, and the long-running serving processes'.
METRIC_SOURCES = (TELEMETRY, *sorted((ROOT / "src" / "aitasks" / "serving").glob("*.py")))
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
#: Labels Prometheus or the Pushgateway add: the grouping key of aitasks.runtime.step.finish_step
#: (job, pipeline, step, and shard for a fan-out step), instance, le. No run_id: a run id in the
#: grouping key made the gateway grow without bound and froze every gauge of a past run (issue 12).
GROUPING = {"job", "pipeline", "step", "shard"}
EXTRA_LABELS = GROUPING | {"instance", "le", "__name__"}
#: Metrics the Pushgateway sets for every pushed group (its README, "Exposed metrics").
GATEWAY_METRICS = {"push_time_seconds": GROUPING | {"instance"}, "push_failure_time_seconds": GROUPING | {"instance"}}
STATUSES = {"succeeded", "failed", "idempotent_hit"}
MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def exported_metrics() -> dict[str, set[str]]:
    """Metric names as Prometheus sees them, with their label names, from the registering calls."""
    suffixes = {
        "Counter": ("_total", "_created"),
        "Histogram": ("_bucket", "_sum", "_count", "_created"),
        "Summary": ("_sum", "_count", "_created", ""),
        "Gauge": ("",),
    }
    out: dict[str, set[str]] = {}
    nodes = [n for src in METRIC_SOURCES for n in ast.walk(ast.parse(src.read_text()))]
    for node in nodes:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in suffixes:
            name = ast.literal_eval(node.args[0])
            labels = set(ast.literal_eval(node.args[2])) if len(node.args) > 2 else set()
            base = name.removesuffix("_total") if node.func.id == "Counter" else name
            for suffix in suffixes[node.func.id]:
                out[base + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def registered_tasks() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "src" / "aitasks").rglob("*.py"):
        names |= set(re.findall(r'@ai_task\(\s*name="([^"]+)"', path.read_text()))
    return names


def parse_expr(expr: str) -> tuple[set[str], list[tuple[str, str, str]], set[str]]:
    """Metric names, label matchers and grouping labels of a PromQL expression, or AssertionError."""
    text = re.sub(r"#.*", "", expr)
    stack: list[str] = []
    for ch in re.sub(r'"(?:[^"\\]|\\.)*"', '""', text):
        if ch in "([{":
            stack.append(ch)
        elif ch in ")]}":
            assert stack and stack.pop() + ch in {"()", "[]", "{}"}, f"unbalanced {ch!r} in {expr!r}"
    assert not stack, f"unclosed {stack} in {expr!r}"
    matchers: list[tuple[str, str, str]] = []

    def take(m: re.Match[str]) -> str:
        body = m.group(1).strip().rstrip(",")
        for part in filter(None, re.split(r',(?=(?:[^"]*"[^"]*")*[^"]*$)', body)):
            mm = MATCHER.fullmatch(part)
            assert mm, f"bad label matcher {part!r} in {expr!r}"
            matchers.append((mm.group(1), mm.group(2), mm.group(3)))
        return " "

    text = re.sub(r"\{([^{}]*)\}", take, text)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery selectors
    grouping: set[str] = set()

    def group(m: re.Match[str]) -> str:
        grouping.update(x.strip() for x in m.group(2).split(",") if x.strip())
        return " "

    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", group, text)
    text = re.sub(r"\boffset\s+\d+[smhdwy]", " ", text)
    names = set()
    for m in IDENT.finditer(text):
        rest = text[m.end() :].lstrip()
        word = m.group(0)
        if word in KEYWORDS or rest.startswith("("):
            continue
        if re.fullmatch(r"\d", text[m.start() - 1 : m.start()] or " "):  # the e in 1e3, unit of 5m
            continue
        names.add(word)
    return names, matchers, grouping


def rule_specs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d["spec"] for d in docs if d["kind"] == "PrometheusRule"]


def metrics_job(task: str) -> str:
    """The Pushgateway job of a task's step, as aitasks.runtime.step.metrics_job names it."""
    return task.replace(".", "-").replace("_", "-")


def check_expr(expr: str, recorded: set[str]) -> None:
    metrics = exported_metrics() | GATEWAY_METRICS
    tasks = registered_tasks()
    names, matchers, grouping = parse_expr(expr)
    assert names, f"no metric in {expr!r}"
    for name in names:
        assert name in metrics or name in recorded, f"{name!r} is neither exported by telemetry.py nor recorded"
    known_labels = set().union(*metrics.values()) | EXTRA_LABELS
    for label, op, value in matchers:
        assert label in known_labels, f"unknown label {label!r} in {expr!r}"
        if label == "task" and op == "=":
            assert value in tasks, f"task {value!r} is not a registered task"
        if label == "status" and op in {"=", "=~"}:
            assert set(value.split("|")) <= STATUSES, f"status {value!r} is never emitted"
        if label == "job" and op == "=":
            assert value in {metrics_job(t) for t in tasks}, f"job {value!r} is no task's Pushgateway job"
    assert grouping <= known_labels, f"unknown grouping labels {grouping - known_labels}"


def test_the_telemetry_parser_sees_the_task_metrics() -> None:
    metrics = exported_metrics()
    for name in (
        "aitasks_task_runs_total",
        "aitasks_task_retries_total",
        "aitasks_task_idempotent_hits_total",
        "aitasks_task_duration_seconds_bucket",
    ):
        assert name in metrics
    assert metrics["aitasks_task_runs_total"] == {"task", "version", "status"}
    assert all(s in TELEMETRY.read_text() for s in STATUSES)


def test_alerts_exist_and_expressions_use_exported_metrics(docs: list[dict[str, Any]]) -> None:
    (spec,) = rule_specs(docs)
    rules = [r for g in spec["groups"] for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert {
        "AitasksTaskFailureRateHigh",
        "AitasksTaskRetriesSpike",
        "AitasksRecoTrainingNotSucceeded",
        "AitasksIndexStale",
        "AitasksDriftCheckFailing",
    } <= alerts
    for r in rules:
        assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations", "keep_firing_for"}
        check_expr(r["expr"], recorded)
        if "alert" in r:
            assert r["labels"]["severity"] in {"info", "warning", "critical"}
            assert r["annotations"]["summary"]
            assert re.fullmatch(r"\d+[smh]", r.get("for", "0s"))


def test_dashboard_is_valid_and_uses_exported_metrics(docs: list[dict[str, Any]]) -> None:
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "aitasks-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = cm["data"].values()
    dashboard = json.loads(text)
    assert dashboard["uid"] and dashboard["panels"]
    recorded = {r["record"] for s in rule_specs(docs) for g in s["groups"] for r in g["rules"] if "record" in r}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            check_expr(target["expr"], recorded)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("sum(rate(aitasks_unknown_total[5m]))", "neither exported"),
        ('aitasks_task_runs_total{task="no.such"}', "not a registered task"),
        ('aitasks_task_runs_total{status="ok"}', "never emitted"),
        ("sum(aitasks_task_runs_total", "unclosed"),
        ("aitasks_task_runs_total{task=x}", "bad label matcher"),
        ("sum by (region) (aitasks_task_runs_total)", "unknown grouping"),
        ('aitasks_task_runs_total{run_id!=""}', "unknown label 'run_id'"),
        ('push_time_seconds{job="no-such-task"}', "no task's Pushgateway job"),
    ],
)
def test_checker_rejects_bad_expressions(expr: str, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_expr(expr, set())


def test_promtool_checks_the_rules(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed; expressions are checked by the tokenizer above")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule_specs(docs)[0]))
    subprocess.run([promtool, "check", "rules", str(path)], check=True, capture_output=True, timeout=60)


def alert_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for s in rule_specs(docs) for g in s["groups"] for r in g["rules"] if "alert" in r]


def test_the_job_names_match_the_step_adapter() -> None:
    """metrics_job above is the adapter's: data.drift -> data-drift, reco.training_set -> reco-training-set."""
    from aitasks.runtime.step import metrics_job as adapter_job

    for task in registered_tasks():
        assert adapter_job(task) == metrics_job(task), task


def test_freshness_and_success_alerts_fire_when_nothing_was_pushed(docs: list[dict[str, Any]]) -> None:
    """Every alert comparing a timestamp with time() (not succeeded, stale) also fires on absent() of
    the same selector: a pipeline that never pushed must not look healthy."""
    fresh = [r for r in alert_rules(docs) if "time()" in r["expr"]]
    assert {r["alert"] for r in fresh} >= {
        "AitasksRecoTrainingNotSucceeded",
        "AitasksAudioAnalysisNotSucceeded",
        "AitasksIndexStale",
        "AitasksDriftCheckStale",
    }
    for r in fresh:
        selectors = set(re.findall(r"\(\s*([a-z_:]+\{[^}]*\})\s*\)", r["expr"]))
        absent = set(re.findall(r"absent\(\s*([a-z_:]+\{[^}]*\})\s*\)", r["expr"]))
        assert absent, f"{r['alert']} has no absent()"
        assert selectors <= absent, f"{r['alert']}: absent() must cover {selectors - absent}"
    for r in alert_rules(docs):
        if r["alert"].endswith(("NotSucceeded", "Stale")):
            assert r in fresh, f"{r['alert']} is a freshness alert without a time() comparison"


def test_no_expression_depends_on_a_run_id(docs: list[dict[str, Any]]) -> None:
    """The grouping has no run_id; a rule selecting on it would see nothing (or every run forever)."""
    for s in rule_specs(docs):
        assert "run_id" not in json.dumps(s)
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "aitasks-grafana-dashboard")
    assert "run_id" not in json.dumps(cm["data"])


def test_drift_alerts_read_the_latest_check_only(docs: list[dict[str, Any]]) -> None:
    """The drift gauges hold the latest check (each push replaces the group): a window over past values
    (max_over_time) would keep one drifted run alerting after a good check replaced it."""
    drift = next(r for r in alert_rules(docs) if r["alert"] == "AitasksDriftOverThreshold")
    assert "_over_time" not in drift["expr"]
    assert "aitasks_drift_max_psi" in drift["expr"] and "aitasks_drift_features" in drift["expr"]


def test_pushed_runs_are_counted_by_their_push_time(docs: list[dict[str, Any]]) -> None:
    """Pushed counters never move (each push replaces them): "in the last hour" must come from the
    Pushgateway's push_time_seconds, joined on the grouping key; scraped ones use increase()."""
    rules = {r.get("record"): r["expr"] for s in rule_specs(docs) for g in s["groups"] for r in g["rules"]}
    for name in ("aitasks:task_runs:1h", "aitasks:task_retries:1h"):
        expr = " ".join(rules[name].split())
        assert "on (job, pipeline, step) (time() - push_time_seconds < 3600)" in expr, name
        assert 'step!=""' in expr and 'step=""' in expr and "increase(" in expr, name
