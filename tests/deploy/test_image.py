"""The container image runs (`make image-check`): built by deploy/docker/build.sh, started the way the
chart starts it — the chart's own config file, a non-root user, a read-only root filesystem with a
writable /tmp only, every capability dropped, the bundle mounted read-only — against a real Kafka
broker on the host network. It must become ready, score a short stream, answer /metrics, and stop
on SIGTERM with exit code 0. Its size, build time and memory are printed (run with -s). A team's
model code goes into the image both ways README "Deploying" documents (`build.sh --extra-wheels` and
its `FROM` recipe, taken from the README itself), and scores a bundle that names its factory.

Needs a Docker daemon: `make image-check` starts a private one (deploy/docker/dockerd.sh).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from connectors.kafka import ensure_topics
from tests.deploy.conftest import ROOT, Tools, free_port

BUILD = ROOT / "deploy" / "docker" / "build.sh"
README = ROOT / "README.md"
EVENTS = 400
MODEL_PACKAGE = "dknn_image_check_model"
MODEL_CODE = """\"\"\"A team's model package: the factory its bundles name.\"\"\"

import torch


def build() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
"""
MODEL_PYPROJECT = """[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "dknn-image-check-model"
version = "1.0"
dependencies = ["torch"]

[tool.setuptools]
packages = ["dknn_image_check_model"]
"""


def _docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def image() -> dict[str, str]:
    """deploy/docker/build.sh's IMAGE=, IMAGE_SIZE_BYTES= and BUILD_SECONDS= lines."""
    assert _docker("version", check=False).returncode == 0, "no Docker daemon: run `make image-check`"
    proc = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, timeout=3600, check=False)
    assert proc.returncode == 0, f"build.sh failed:\n{proc.stderr[-4000:]}"
    built = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    print(
        f"\nimage {built['IMAGE']}: {int(built['IMAGE_SIZE_BYTES']) / 1e6:.0f} MB, built in {built['BUILD_SECONDS']} s"
    )
    return built


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MNIST reference bundle on a small budget (about 20 s), readable by the image's user."""
    path = tmp_path_factory.mktemp("bundle") / "mnist-cnn"
    command = [sys.executable, "-m", "agent.cli", "train-reference", "mnist", "--out", str(path)]
    subprocess.run([*command, "--epochs", "1", "--train-size", "1000", "--quiet"], check=True, timeout=900)
    for item in [path, *path.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)
    for parent in path.parents:  # pytest's tmp dirs are 0700: let uid 10001 reach the bundle
        if parent == Path(tempfile.gettempdir()):
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    return path


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_:]+)(\{[^}]*\})? ([0-9.e+-]+|NaN)$", line)
        if match:
            values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return values


def _total(values: dict[str, float], name: str) -> float:
    return sum(value for key, value in values.items() if key == name or key.startswith(name + "{"))


@pytest.fixture
def container(
    image: dict[str, str], bundle: Path, kafka_bootstrap: str, tools: Tools, tmp_path: Path
) -> Iterator[tuple[str, int, str]]:
    name = f"dknn-image-check-{uuid.uuid4().hex[:8]}"
    topics = {key: f"{name}-{key}" for key in ("events", "quarantine", "dead")}
    port = free_port()
    # The chart's own config file, for this broker and these topics.
    rendered = tools.template(
        "--set",
        f"kafka.bootstrapServers={kafka_bootstrap},metrics.port={port},config.input_topic={topics['events']},"
        f"config.quarantine_topic={topics['quarantine']},config.dead_letter_topic={topics['dead']},config.group_id={name}",
    ).stdout
    config_map = next(
        doc
        for doc in yaml.safe_load_all(rendered)
        if doc and doc["kind"] == "ConfigMap" and "config.yaml" in doc["data"]
    )
    config = tmp_path / "config.yaml"
    config.write_text(config_map["data"]["config.yaml"])
    config.chmod(0o644)
    tmp_path.chmod(0o755)
    ensure_topics(kafka_bootstrap, [topics["events"]], partitions=2)
    ensure_topics(kafka_bootstrap, [topics["quarantine"], topics["dead"]])
    subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "produce-demo",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--topic",
            topics["events"],
            "--artifacts",
            str(bundle),
            "--count",
            str(EVENTS),
            "--mix",
            "clean=0.8,noise=0.1,malformed=0.1",
        ],
        check=True,
        timeout=300,
    )
    _docker(
        "run",
        "--detach",
        "--name",
        name,
        "--network=host",
        "--read-only",
        "--tmpfs",
        "/tmp:rw,size=256m",
        "--user",
        "10001:10001",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--memory",
        "1536m",
        "-e",
        "DKNN_METRICS__HOST=127.0.0.1",  # host network: keep /metrics on loopback
        "-v",
        f"{bundle}:/bundle:ro",
        "-v",
        f"{config}:/etc/dknn/config.yaml:ro",
        image["IMAGE"],
        "--config",
        "/etc/dknn/config.yaml",
    )
    try:
        yield name, port, image["IMAGE"]
    finally:
        logs = _docker("logs", name, check=False)
        print(f"\n--- container log (tail) ---\n{(logs.stdout + logs.stderr)[-2000:]}")
        _docker("rm", "-f", name, check=False)


def _handled(values: dict[str, float]) -> float:
    return _total(values, "dknn_events_scored_total") + _total(values, "dknn_events_dead_lettered_total")


def test_the_image_scores_a_stream_locked_down_and_stops_cleanly(container: tuple[str, int, str]) -> None:
    name, port, tag = container
    deadline = time.monotonic() + 180
    ready = False
    while time.monotonic() < deadline and not ready:
        state = json.loads(_docker("inspect", name).stdout)[0]["State"]
        assert state["Running"], _docker("logs", name, check=False).stderr[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                ready = response.status == 200
        except OSError:
            time.sleep(1)
    assert ready, "the container never became ready"
    # Wait for every event to be handled, not merely consumed: an event counts as consumed when
    # polled, and its batch is scored and delivered after that (this raced once in CI: 384 of 400).
    deadline = time.monotonic() + 180
    while _handled(values := _metrics(port)) < EVENTS:
        assert time.monotonic() < deadline, f"the stream was not handled: {_handled(values):.0f} of {EVENTS}"
        time.sleep(1)
    assert _handled(values) == EVENTS and _total(values, "dknn_events_consumed_total") == EVENTS
    assert _total(values, "dknn_events_dead_lettered_total") > 0  # the malformed tenth

    inspected = json.loads(_docker("inspect", name).stdout)[0]
    assert inspected["Config"]["User"] == "10001:10001" and inspected["HostConfig"]["ReadonlyRootfs"] is True
    pid = inspected["State"]["Pid"]
    status = Path(f"/proc/{pid}/status").read_text()
    assert re.search(r"^Uid:\s+10001\s", status, re.M), "the agent does not run as uid 10001"
    rss_kb = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
    hwm_kb = int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1))
    labels = json.loads(_docker("image", "inspect", tag).stdout)[0]["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] and labels["org.opencontainers.image.source"]
    print(f"\nagent RSS in the container after {EVENTS} events: {rss_kb / 1024:.0f} MiB (peak {hwm_kb / 1024:.0f} MiB)")

    started = time.monotonic()
    _docker("stop", "--time", "60", name, timeout=90)  # SIGTERM, SIGKILL only after 60 s
    stopped = json.loads(_docker("inspect", name).stdout)[0]["State"]
    logs = _docker("logs", name).stderr
    assert stopped["ExitCode"] == 0, logs[-3000:]
    assert stopped["OOMKilled"] is False
    assert f"[dknn-agent] {EVENTS} events" in logs, logs[-3000:]  # the final summary: it shut down, not died
    print(f"SIGTERM to exit 0 in {time.monotonic() - started:.1f} s")


def test_a_bundle_image_copied_by_the_init_container_verifies(
    image: dict[str, str], bundle: Path, tmp_path: Path, tools: Tools
) -> None:
    """The chart's other bundle source, as README "Deploying" builds it: an image FROM the agent's
    with the bundle at /bundle, its init container's exact command into an empty directory, then
    `dknn-agent info` (every hash and dimension checked) on the copy, read-only."""
    docs = yaml.safe_load_all(
        tools.template(
            "--set", "kafka.bootstrapServers=k:9092,bundle.persistentVolumeClaim=,bundle.image.repository=b"
        ).stdout
    )
    deployment = next(doc for doc in docs if doc and doc["kind"] == "Deployment")
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    (mount,) = init["volumeMounts"]
    tag = f"dknn-bundle-check:{uuid.uuid4().hex[:8]}"
    context = tmp_path / "context"
    context.mkdir()
    subprocess.run(["cp", "-R", str(bundle), str(context / "mnist-cnn")], check=True)
    (context / "Dockerfile").write_text(f"FROM {image['IMAGE']}\nCOPY --chown=10001:10001 mnist-cnn /bundle\n")
    build = subprocess.run(
        ["docker", "build", "-q", "--network=none", "-t", tag, str(context)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    assert build.returncode == 0, build.stderr
    copy = tmp_path / "emptydir"
    copy.mkdir()
    copy.chmod(0o777)  # an emptyDir the pod's fsGroup can write
    try:
        common = ["run", "--rm", "--network=none", "--read-only", "--user", "10001:10001", "--cap-drop", "ALL"]
        _docker(
            *common, "-v", f"{copy}:{mount['mountPath']}", "--entrypoint", init["command"][0], tag, *init["command"][1:]
        )
        info = _docker(
            *common, "-v", f"{copy}:/bundle:ro", "--entrypoint", "dknn-agent", image["IMAGE"], "info", "/bundle"
        )
        assert "mnist-cnn" in info.stdout, info.stdout
    finally:
        _docker("rmi", tag, check=False)


# -- the team's model code in the image ---------------------------------------------------------


def _world_readable(path: Path) -> None:
    for item in [path, *path.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)
    for parent in path.parents:  # pytest's tmp dirs are 0700: let uid 10001 reach it
        if parent == Path(tempfile.gettempdir()):
            break
        parent.chmod(parent.stat().st_mode | 0o005)


@pytest.fixture(scope="session")
def model_code(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model package built as README "Deploying" says (`pip wheel -w model-wheels ./mypkg`), a
    bundle fitted with its factory, and inputs to score."""
    work = tmp_path_factory.mktemp("model-code")
    source = work / "model"
    (source / MODEL_PACKAGE).mkdir(parents=True)
    (source / MODEL_PACKAGE / "__init__.py").write_text(MODEL_CODE)
    (source / "pyproject.toml").write_text(MODEL_PYPROJECT)
    wheels = work / "model-wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip_wheel, "-w", str(wheels), str(source)], check=True, timeout=300)
    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 4.0, size=(3, 8))
    for name, n in (("train", 300), ("calibration", 100)):
        y = rng.integers(0, 3, size=n)
        x = (centres[y] + rng.normal(0.0, 1.0, size=(n, 8))).astype(np.float32)
        np.savez(work / f"{name}.npz", x=x, y=y)
    data = work / "data"
    data.mkdir()
    x = centres[rng.integers(0, 3, size=20)] + rng.normal(0.0, 1.0, size=(20, 8))
    np.save(data / "x.npy", x.astype(np.float32))
    env = {**os.environ, "PYTHONPATH": str(source)}
    weights = work / "model.pt"
    make_weights = f"import torch, {MODEL_PACKAGE} as m; torch.manual_seed(0); torch.save(m.build().state_dict(), {str(weights)!r})"
    subprocess.run([sys.executable, "-c", make_weights], check=True, timeout=120, env=env)
    bundle = work / "bundle"
    fit = [sys.executable, "-m", "agent.cli", "fit", "--factory", f"{MODEL_PACKAGE}:build", "--weights", str(weights)]
    fit += ["--layers", "1,2", "--train", str(work / "train.npz"), "--calibration", str(work / "calibration.npz")]
    subprocess.run([*fit, "--out", str(bundle), "--model-name", "team-model"], check=True, timeout=600, env=env)
    _world_readable(bundle)
    _world_readable(data)
    return {"wheels": wheels, "bundle": bundle, "data": data}


def _score_in(tag: str, model_code: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    """`dknn-agent score` of the bundle in the image, locked down as the chart runs the agent."""
    return _docker(
        *("run", "--rm", "--network=none", "--read-only", "--tmpfs", "/tmp:rw,size=64m", "--user", "10001:10001"),
        *("--cap-drop", "ALL", "-v", f"{model_code['bundle']}:/bundle:ro", "-v", f"{model_code['data']}:/data:ro"),
        *("--entrypoint", "dknn-agent", tag, "score", "--artifacts", "/bundle", "--input", "/data/x.npy"),
        *("--trust-factory", MODEL_PACKAGE),
        check=False,
    )


def _scored(proc: subprocess.CompletedProcess[str]) -> list[dict]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 20 and all(0.0 <= line["credibility"] <= 1.0 for line in lines), proc.stdout[-2000:]
    return lines


def test_the_agent_image_alone_cannot_import_the_teams_model(
    image: dict[str, str], model_code: dict[str, Path]
) -> None:
    proc = _score_in(image["IMAGE"], model_code)
    assert proc.returncode != 0 and f"cannot import {MODEL_PACKAGE}" in proc.stderr, proc.stderr[-2000:]


def test_model_wheels_through_build_sh_extra_wheels(image: dict[str, str], model_code: dict[str, Path]) -> None:
    tag = f"dknn-agent-model-check:{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        ["bash", str(BUILD), "--extra-wheels", str(model_code["wheels"]), "--tag", tag],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert proc.returncode == 0, f"build.sh --extra-wheels failed:\n{proc.stderr[-4000:]}"
    built = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    try:
        assert built["IMAGE"] == tag and built["EXTRA_WHEELS"] == "1"
        print(f"\nwith --extra-wheels: built in {built['BUILD_SECONDS']} s")
        _scored(_score_in(tag, model_code))
        assert json.loads(_docker("image", "inspect", tag).stdout)[0]["Config"]["User"] == "10001:10001"
    finally:
        _docker("rmi", tag, check=False)


def test_model_wheels_through_the_readmes_from_recipe(
    image: dict[str, str], model_code: dict[str, Path], tmp_path: Path
) -> None:
    """The `FROM` recipe exactly as README "Deploying" prints it, on the image built here."""
    deploying = README.read_text().split("\n## Deploying\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```dockerfile\n(.*?)```", deploying, re.S)
    (recipe,) = [block for block in blocks if "model-wheels" in block]
    first, rest = recipe.split("\n", 1)
    assert first.startswith("FROM ")
    context = tmp_path / "context"
    context.mkdir()
    subprocess.run(["cp", "-R", str(model_code["wheels"]), str(context / "model-wheels")], check=True)
    (context / "Dockerfile.model").write_text(f"FROM {image['IMAGE']}\n{rest}")
    tag = f"dknn-agent-model-recipe:{uuid.uuid4().hex[:8]}"
    build = subprocess.run(
        ["docker", "build", "-q", "--network=none", "-t", tag, "-f", str(context / "Dockerfile.model"), str(context)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    assert build.returncode == 0, build.stderr[-4000:]
    try:
        _scored(_score_in(tag, model_code))
        config = json.loads(_docker("image", "inspect", tag).stdout)[0]["Config"]
        assert config["User"] == "10001:10001" and config["Entrypoint"] == ["dknn-agent", "run"]
        python = ["run", "--rm", "--network=none", "--entrypoint", "/opt/dknn/bin/python", tag]
        assert _docker(*python, "-c", "import pip", check=False).returncode != 0, "the recipe left pip in the venv"
    finally:
        _docker("rmi", tag, check=False)


def test_the_image_holds_the_product_only_and_its_help_lists_what_runs_there(image: dict[str, str]) -> None:
    """No lab module (benchmarks, the MNIST reference model) and no test fake in the image; `--help`
    names only commands that run there, and a lab command says in one line how to get it."""
    found = _docker(
        "run",
        "--rm",
        "--entrypoint",
        "python",
        image["IMAGE"],
        "-c",
        "import importlib.util as u; print([m for m in ('dknn_lab', 'agent.research', 'connectors.memory', "
        "'sklearn', 'matplotlib') if u.find_spec(m)])",
    )
    assert found.stdout.strip() == "[]", found.stdout
    help_text = _docker("run", "--rm", "--entrypoint", "dknn-agent", image["IMAGE"], "--help").stdout
    listed = re.findall(r"^    ([a-z-]+)", help_text, re.M)
    assert listed == ["run", "layers", "fit", "score", "info", "evaluate", "extend", "review"], help_text
    for command in listed:
        assert _docker("run", "--rm", "--entrypoint", "dknn-agent", image["IMAGE"], command, "--help").returncode == 0
    bench = _docker("run", "--rm", "--entrypoint", "dknn-agent", image["IMAGE"], "bench", "quality", check=False)
    assert bench.returncode == 2 and "pip install ./lab" in bench.stderr, bench.stderr


def test_the_review_console_runs_in_the_image_as_the_chart_runs_it(
    container: tuple[str, int, str], kafka_bootstrap: str, bundle: Path, tools: Tools, tmp_path: Path
) -> None:
    """`dknn-agent review` from the image, with the chart's own command line, mounts and lock-down,
    over what the agent in the image quarantined: ready, a page that lists the events, exit 0."""
    name, agent_port, tag = container
    deadline = time.monotonic() + 240
    values: dict[str, float] = {}
    while not _ready(agent_port) or _handled(values := _metrics(agent_port)) < EVENTS:
        assert time.monotonic() < deadline, f"the agent in the image did not handle the stream: {values}"
        time.sleep(1)
    assert values['dknn_events_scored_total{verdict="quarantined"}'] > 0  # the uniform noise, at least
    reviews, port, token = f"{name}-reviews", free_port(), "a-console-token-for-the-image-test"
    ensure_topics(kafka_bootstrap, [reviews])
    rendered = tools.render(
        "--set",
        f"kafka.bootstrapServers={kafka_bootstrap},config.quarantine_topic={name}-quarantine,console.enabled=true,"
        f"console.reviewsTopic={reviews},console.port={port},console.auth.type=token,console.auth.token={token}",
    )
    (deployment,) = [
        doc for doc in rendered if doc["kind"] == "Deployment" and doc["metadata"]["name"].endswith("-console")
    ]
    spec = deployment["spec"]["template"]["spec"]["containers"][0]
    auth = tmp_path / "console-auth"
    auth.mkdir()
    (auth / "token").write_text(token)
    for path in (tmp_path, auth, auth / "token"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    mounts = {mount["name"]: mount["mountPath"] for mount in spec["volumeMounts"]}
    console = f"{name}-console"
    _docker(
        "run", "--detach", "--name", console, "--network=host", "--read-only", "--user", "10001:10001",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--tmpfs", f"{mounts['tmp']}:rw,size=64m", "--tmpfs", f"{mounts['database']}:rw,size=256m,uid=10001",
        "-v", f"{bundle}:{mounts['bundle']}:ro", "-v", f"{auth}:{mounts['auth']}:ro",
        *(arg for env in spec["env"] for arg in ("-e", f"{env['name']}={env['value']}")),
        "--entrypoint", spec["command"][0], tag, *spec["command"][1:], *spec["args"],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not _ready(port):
            state = json.loads(_docker("inspect", console).stdout)[0]["State"]
            assert state["Running"], _docker("logs", console, check=False).stderr[-3000:]
            assert time.monotonic() < deadline, "the console in the image never became ready"
            time.sleep(1)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            page = response.read().decode()
        assert response.status == 200 and 'href="/events/' in page, page[:2000]
        _docker("stop", "--time", "30", console, timeout=60)
        stopped = json.loads(_docker("inspect", console).stdout)[0]["State"]
        assert stopped["ExitCode"] == 0, _docker("logs", console, check=False).stderr[-3000:]
    finally:
        _docker("rm", "-f", console, check=False)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
