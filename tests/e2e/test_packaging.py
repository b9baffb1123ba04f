"""The wheel ships the product only: engine, runtime, connectors, evaluation, the CLI and the event
producer, and nothing of the lab (dknn_lab: benchmarks, the MNIST reference model and its training)
or of the tests (the in-memory connectors). The lab is a distribution of its own (lab/) that adds
its commands through an entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAB_PARTS = ("dknn_lab/", "agent/research/", "connectors/memory.py", "tests/")


def _build_wheel(source: Path, out: Path) -> zipfile.ZipFile:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


@pytest.fixture(scope="module")
def product_wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """Built from a copy of the sources: setuptools reuses a checkout's build/ directory, where modules
    that have since moved away would still be found."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "setup.py", "README.md", "NOTICE"):
        shutil.copy(ROOT / name, source / name)
    for package in ("agent", "connectors", "dknn_events"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    return _build_wheel(source, tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_the_product_and_no_lab_module(product_wheel: zipfile.ZipFile) -> None:
    names = product_wheel.namelist()
    lab = [name for name in names if name.startswith(LAB_PARTS)]
    assert lab == [], f"lab or test modules in the wheel: {lab}"
    for module in ("agent/cli/fit.py", "agent/engine/dknn.py", "agent/engine/drift.py", "connectors/kafka.py"):
        assert module in names, f"{module} missing from the wheel"
    templates = {Path(name).name for name in names if name.startswith("agent/console/templates/")}
    shipped = {path.name for path in (ROOT / "agent" / "console" / "templates").glob("*.html")}
    assert shipped and templates == shipped, "the review console's templates are package data"
    entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
    text = product_wheel.read(entry_points).decode()
    assert "dknn-agent = agent.cli:main" in text and "dknn_agent.commands" not in text


def test_the_lab_is_its_own_distribution_adding_its_commands(tmp_path: Path) -> None:
    wheel = _build_wheel(ROOT / "lab", tmp_path)
    names = wheel.namelist()
    assert "dknn_lab/bench/quality.py" in names and "dknn_lab/models/mnist.py" in names
    assert not [name for name in names if name.startswith(("agent/", "connectors/"))]
    entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
    assert "[dknn_agent.commands]" in wheel.read(entry_points).decode()


def test_without_the_lab_its_commands_are_hidden_and_say_how_to_get_them(tmp_path: Path) -> None:
    """The product's CLI with the lab's entry point gone (as in the image): a new environment whose
    only dknn code is the product, run through `python -I` so the lab's editable install is unseen."""
    script = (
        "import importlib.metadata as m, sys\n"
        "real = m.entry_points\n"
        "m.entry_points = lambda **kw: [] if kw.get('group') == 'dknn_agent.commands' else real(**kw)\n"
        "sys.modules['dknn_lab'] = None\n"
        "from agent.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    help_text = subprocess.run([sys.executable, "-c", script, "--help"], capture_output=True, text=True, check=False)
    assert help_text.returncode == 0, help_text.stderr
    for lab_command in ("bench", "train-reference", "produce-demo", " demo "):
        assert lab_command not in help_text.stdout
    bench = subprocess.run(
        [sys.executable, "-c", script, "bench", "quality", "--artifacts", "x"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bench.returncode == 2
    assert bench.stderr.strip() == (
        "dknn-agent: bench is a lab command: install the lab from a clone of the repository (pip install ./lab; "
        "make setup does)"
    )
