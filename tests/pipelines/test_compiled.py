"""Compiled pipelines: committed, deterministic, and carrying the Kubernetes settings kfp.local ignores."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.cli import COMPILED, compile_pipeline
from pipelines.registry import pipelines


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("compiled")
    return {name: compile_pipeline(name, out).read_text() for name in pipelines()}


@pytest.mark.parametrize("name", sorted(pipelines()))
def test_committed_yaml_is_current(name: str, fresh: dict[str, str]) -> None:
    committed = COMPILED / f"{name}.yaml"
    assert committed.exists(), f"run `make compile`: {committed} is missing"
    assert committed.read_text() == fresh[name], f"{committed} is stale: run `make compile`"


def test_compile_is_deterministic(tmp_path: Path, fresh: dict[str, str]) -> None:
    for name in pipelines():
        assert compile_pipeline(name, tmp_path).read_text() == fresh[name]


def _docs(text: str) -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all(text))
    return docs[0], docs[1]


def test_data_pipeline_kubernetes_settings(fresh: dict[str, str]) -> None:
    spec, platform = _docs(fresh["data-pipeline"])
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 5
    for name, body in executors.items():
        res = body["container"]["resources"]
        assert res.get("cpuRequest") and res.get("memoryRequest"), f"{name} lacks requests"
        assert res.get("cpuLimit") and res.get("memoryLimit"), f"{name} lacks limits"
        assert body["container"]["image"].startswith("europe-docker.pkg.dev/aitasks-prod/aitasks/aitasks-cpu:")
        assert "pip install" not in " ".join(body["container"].get("command", [])), "images are baked"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, body in k8s.items():
        labels = body["podMetadata"]["labels"]
        assert labels["aitasks.io/pipeline"] == "data-pipeline"
        assert {"aitasks.io/step", "aitasks.io/task", "aitasks.io/task-version"} <= set(labels), name
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["source-data"]["cachingOptions"].get("enableCache") is not True
    assert tasks["materialize-features"]["cachingOptions"].get("enableCache") is not True
    assert tasks["materialize-features"]["retryPolicy"]["maxRetryCount"] == 3
    assert tasks["compute-features"]["cachingOptions"]["enableCache"] is True


@pytest.mark.parametrize("name", sorted(pipelines()))
def test_run_context_reaches_every_step(name: str, fresh: dict[str, str]) -> None:
    """One ``run_context`` dict parameter, the pipeline name and the two KFP placeholders, on every step."""
    from aitasks.runtime.step import RUN_CONTEXT_KEYS

    spec, _ = _docs(fresh[name])
    root_params = spec["root"]["inputDefinitions"]["parameters"]
    assert root_params["run_context"]["parameterType"] == "STRUCT"
    assert set(root_params["run_context"]["defaultValue"]) == set(RUN_CONTEXT_KEYS)
    steps = {n: t for n, t in _all_tasks(spec).items() if not n.startswith(("condition", "exit-handler", "for-loop"))}
    assert steps
    for task_name, task in steps.items():
        params = task["inputs"]["parameters"]
        assert params["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}", task_name
        assert params["step"]["runtimeValue"]["constant"] == "{{$.pipeline_task_name}}", task_name
        assert params["pipeline"]["runtimeValue"]["constant"] == name, task_name
        assert params["run_context"]["componentInputParameter"] in {"run_context", "pipelinechannel--run_context"}


@pytest.mark.parametrize("name", sorted(pipelines()))
def test_pod_labels_carry_the_registered_task_versions(name: str, fresh: dict[str, str]) -> None:
    """Task name and version on every pod come from the task registry: a version bump cannot leave them stale."""
    from aitasks.runtime.task import load_builtin_tasks

    registry = load_builtin_tasks()
    _, platform = _docs(fresh[name])
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors
    for executor, body in executors.items():
        task_name = body["podMetadata"]["annotations"]["aitasks.io/task-name"]
        labels = body["podMetadata"]["labels"]
        assert task_name in registry, f"{executor}: {task_name} is not a registered task"
        assert labels["aitasks.io/task-version"] == registry[task_name].version, executor
        assert labels["aitasks.io/task"] == task_name.replace(".", "-"), executor
        assert labels["aitasks.io/pipeline"] == name, executor


def test_a_task_version_bump_reaches_the_pod_labels(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kfp import compiler, dsl

    from aitasks.runtime.task import get_task

    monkeypatch.setattr(get_task("data.drift"), "version", "9.9.9")
    # Define the pipeline anew (its graph is built when it is defined), then compile it.
    rebuilt = dsl.pipeline(name="data-pipeline")(pipelines()["data-pipeline"].pipeline_func)
    compiler.Compiler().compile(rebuilt, str(tmp_path / "p.yaml"))
    _, platform = _docs((tmp_path / "p.yaml").read_text())
    labels = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-check-drift"]["podMetadata"]
    assert labels["labels"]["aitasks.io/task-version"] == "9.9.9"


def _all_tasks(spec: dict) -> dict[str, dict]:
    """Every task of the pipeline, nested DAGs (exit handler, conditions) included."""
    out = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        out.update(comp.get("dag", {}).get("tasks", {}))
    return out


def test_reco_training_gpu_step_and_kubernetes_settings(fresh: dict[str, str]) -> None:
    spec, platform = _docs(fresh["reco-training"])
    executors = spec["deploymentSpec"]["executors"]
    for name, body in executors.items():
        res = body["container"]["resources"]
        assert res.get("cpuRequest") and res.get("memoryRequest"), f"{name} lacks requests"
        assert res.get("cpuLimit") and res.get("memoryLimit"), f"{name} lacks limits"
        assert "pip install" not in " ".join(body["container"].get("command", [])), "images are baked"
    train = executors["exec-train-model"]["container"]
    assert train["image"].startswith("europe-docker.pkg.dev/aitasks-prod/aitasks/aitasks-gpu:")
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["resources"]["accelerator"]["resourceCount"] == "1"
    gpu_steps = [n for n, b in executors.items() if "accelerator" in b["container"]["resources"]]
    assert gpu_steps == ["exec-train-model"], "only training asks for a GPU"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-train-model"]["nodeSelector"] == {
        "nodeSelectorJson": {"componentInputParameter": "pipelinechannel--gpu_node_selector"}
    }
    assert k8s["exec-train-model"]["tolerations"] == [
        {"tolerationJson": {"componentInputParameter": "pipelinechannel--gpu_toleration"}}
    ]
    assert [n for n, b in k8s.items() if "nodeSelector" in b or "tolerations" in b] == ["exec-train-model"]
    assert set(k8s) == set(executors), "every step carries pod labels"
    for name, body in k8s.items():
        labels = body["podMetadata"]["labels"]
        assert labels["aitasks.io/pipeline"] == "reco-training", name
        assert {"aitasks.io/step", "aitasks.io/task", "aitasks.io/task-version"} <= set(labels), name
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["gpu_node_selector"]["parameterType"] == "STRUCT"
    assert params["gpu_toleration"]["defaultValue"]["effect"] == "NoSchedule"


def test_reco_training_control_flow_retries_and_caching(fresh: dict[str, str]) -> None:
    spec, _ = _docs(fresh["reco-training"])
    root = spec["root"]["dag"]["tasks"]
    # ExitHandler: the run summary runs whatever happens inside, and gets the final status.
    summary = root["summarize-run"]
    assert summary["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert summary["inputs"]["parameters"]["status"] == {"taskFinalStatus": {"producerTask": "exit-handler-1"}}
    tasks = _all_tasks(spec)
    # Promotion, index build and publish only run when the evaluation blessed the model.
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    cond = inner["condition-2"]
    assert (
        cond["triggerPolicy"]["condition"]
        == "inputs.parameter_values['pipelinechannel--evaluate-model-Output'] == true"
    )
    assert set(spec["components"]["comp-condition-2"]["dag"]["tasks"]) == {
        "promote-model",
        "build-index",
        "publish-index",
    }
    # Steps whose result depends on state outside their inputs are never served from the KFP cache.
    for name in ("evaluate-model", "register-model", "promote-model", "publish-index", "materialize-features"):
        assert tasks[name]["cachingOptions"].get("enableCache") is not True, name
    assert tasks["train-model"]["cachingOptions"]["enableCache"] is True
    for name in ("register-model", "promote-model", "publish-index", "build-training-set"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] >= 2, name
    for name, task in tasks.items():
        if "componentRef" in task and name.startswith(("condition", "exit-handler")):
            continue
        params = task["inputs"]["parameters"]
        assert params["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}", name


@pytest.mark.parametrize("name", sorted(pipelines()))
def test_every_step_reads_the_settings_config_map_and_the_step_secret(name: str, fresh: dict[str, str]) -> None:
    """Settings reach every pod as env from the step declaration (kfp.local ignores this: the YAML carries it)."""
    from pipelines.k8s import SECRET_ENV, SETTINGS_CONFIG_MAP, STEP_SECRETS, settings_env

    spec, platform = _docs(fresh[name])
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(spec["deploymentSpec"]["executors"]), "every step"
    for executor, body in executors.items():
        (cm,) = body["configMapAsEnv"]
        assert cm["configMapName"] == SETTINGS_CONFIG_MAP
        assert {e["configMapKey"]: e["envVar"] for e in cm["keyToEnv"]} == settings_env(), executor
        (secret,) = body["secretAsEnv"]
        assert secret["secretName"] == STEP_SECRETS
        assert {e["secretKey"]: e["envVar"] for e in secret["keyToEnv"]} == SECRET_ENV, executor
    # Every setting is covered once: by the ConfigMap or by the Secret, never by both.
    from aitasks.runtime.settings import Settings

    every = {f"AITASKS_{f.upper()}" for f in Settings.model_fields}
    assert set(settings_env().values()) | set(SECRET_ENV.values()) == every
    assert not set(settings_env().values()) & set(SECRET_ENV.values())


def test_every_step_with_a_data_time_takes_the_run_s_logical_time() -> None:
    """A step whose task has an ``as_of`` resolves an empty one from the run's scheduled/creation time.

    Otherwise a retry or rerun of the same run that crosses an hour boundary is a new idempotency key
    (and a new feature event time) for the same run (issue 13, finding 6).
    """
    from aitasks.runtime.task import LogicalTimeParams, get_task
    from pipelines.steps import ALL_STEPS

    timed = [s for s in ALL_STEPS if "as_of" in get_task(s.task).params_model.model_fields]
    assert timed, "no step has an as_of: the check below would prove nothing"
    for spec in timed:
        assert spec.logical_time, f"{spec.name}: as_of without the run's logical time"
        assert issubclass(get_task(spec.task).params_model, LogicalTimeParams), spec.task


def test_reco_training_passes_every_training_setting_and_the_serving_mode(fresh: dict[str, str]) -> None:
    """Every setting `model.train` accepts is a key of the `training` parameter, which reaches the step;
    `exclude_seen` is gone, `serving_mode` reaches `model.evaluate` (issue 13)."""
    from aitasks.model_training.tasks import EvaluateParams, TrainParams
    from aitasks.run_forms import GROUPS

    spec, _ = _docs(fresh["reco-training"])
    tasks = _all_tasks(spec)
    pipeline_params = spec["root"]["inputDefinitions"]["parameters"]
    assert "exclude_seen" not in pipeline_params and "serving_mode" in pipeline_params
    training = GROUPS["training"]
    routed = training.routes["model.train"]
    assert set(routed.values()) == set(TrainParams.model_fields) - {"training_set_uri"}, "a setting is not routed"
    assert pipeline_params["training"]["defaultValue"] == training.default(), "the form shows every key"
    assert set(routed) <= set(pipeline_params["training"]["defaultValue"])
    train = tasks["train-model"]["inputs"]["parameters"]
    assert train["training"]["componentInputParameter"] == "pipelinechannel--training"
    evaluate = tasks["evaluate-model"]["inputs"]["parameters"]
    assert "exclude_seen" not in evaluate and "exclude_seen" not in EvaluateParams.model_fields
    assert evaluate["serving_mode"]["componentInputParameter"] == "pipelinechannel--serving_mode"
    assert evaluate["gate"]["componentInputParameter"] == "pipelinechannel--gate"
    assert {"confidence", "bootstrap_resamples"} <= set(GROUPS["gate"].routes["model.evaluate"].values())


#: Synthetic-data and demo knobs: only ever keys of the one ``synthetic`` parameter, never on a form.
DEMO_KNOBS = {"dirty_rows", "events", "users", "tracks", "days", "start_date", "labelled_per_class", "demo"}
MAX_FORM_PARAMETERS = 15


@pytest.mark.parametrize("name", sorted(pipelines()))
def test_run_forms_are_short_and_carry_no_demo_knob(name: str, fresh: dict[str, str]) -> None:
    """A production run form: at most 15 parameters, synthetic-data settings only inside ``synthetic``."""
    from pipelines.audio_analysis import SYNTHETIC_DEFAULT as AUDIO_SYNTHETIC
    from pipelines.steps import SYNTHETIC_DEFAULT

    spec, _ = _docs(fresh[name])
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert len(params) <= MAX_FORM_PARAMETERS, f"{name}: {len(params)} parameters: {sorted(params)}"
    knobs = DEMO_KNOBS | set(SYNTHETIC_DEFAULT) | set(AUDIO_SYNTHETIC)
    flat = sorted(p for p in params if p in knobs or p.startswith(("demo_", "synthetic_")))
    assert not flat, f"{name}: demo-only knobs on the run form: {flat}"
    if "synthetic" in params:
        assert "demo" in params["synthetic"]["description"].lower(), "the form says it is for demos and tests"


@pytest.mark.parametrize("name", sorted(pipelines()))
def test_group_parameters_show_their_defaults_and_reach_their_steps(name: str, fresh: dict[str, str]) -> None:
    """Each group parameter: every key with its default on the form, every key named in its description,
    and handed to every step whose task it feeds."""
    from aitasks.run_forms import GROUPS

    spec, platform = _docs(fresh[name])
    params = spec["root"]["inputDefinitions"]["parameters"]
    groups = [g for g in params if g in GROUPS]
    if name != "content-generation":
        assert groups, f"{name} has no group parameter"
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    task_of = {e: b["podMetadata"]["annotations"]["aitasks.io/task-name"] for e, b in executors.items()}
    steps = {}
    for task in _all_tasks(spec).values():
        comp = spec["components"].get(task.get("componentRef", {}).get("name", ""), {})
        if comp.get("executorLabel") in task_of:
            steps[task_of[comp["executorLabel"]]] = task["inputs"]["parameters"]
    for g in groups:
        group = GROUPS[g]
        assert params[g]["parameterType"] == "STRUCT" and params[g]["defaultValue"] == group.default(), g
        missing = [k for k in group.keys if k not in params[g]["description"]]
        assert not missing, f"{name}: the description of {g} does not name {missing}"
        fed = [t for t in group.routes if t in steps]
        assert fed, f"{name}: {g} feeds none of its steps"
        for task in fed:
            sources = {v.get("componentInputParameter") for v in steps[task].values()}
            if (name, g, task) == ("reco-tuning", "training", "model.train"):
                # The final training gets the group as the select step returns it: the best trial's settings.
                produced = steps[task]["training"]["taskOutputParameter"]
                assert produced["producerTask"] == "select-trial", produced
                continue
            assert f"pipelinechannel--{g}" in sources or g in sources, f"{name}: {task} does not get {g}"


def test_schedules_pass_valid_parameters() -> None:
    """The recurring runs' parameters exist on their pipelines and their groups validate."""
    from aitasks.run_forms import form_issues
    from pipelines.cli import check_params
    from pipelines.kfp_api import load_schedules

    schedules = load_schedules().schedules
    assert schedules
    for schedule in schedules:
        check_params(schedule.pipeline, dict(schedule.parameters))
        assert not form_issues(schedule.parameters), schedule.name


@pytest.mark.parametrize("name", sorted(pipelines()))
def test_every_run_form_parameter_has_a_description(name: str, fresh: dict[str, str]) -> None:
    """The KFP UI run form shows each parameter's description (compiled from the pipeline's ``Args:``)."""
    spec, _ = _docs(fresh[name])
    params = spec["root"]["inputDefinitions"]["parameters"]
    missing = sorted(k for k, v in params.items() if len(v.get("description", "").strip()) < 10)
    assert not missing, f"{name}: parameters without a description: {missing}"
