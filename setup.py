"""Builds the project's one compiled module, `agent.engine._annoy_batch` (batched Annoy queries
with the GIL released; see agent/engine/_annoy_batch.cpp). Everything else is in pyproject.toml.

The module compiles against Annoy's C++ headers. They are not copied into this repository: they
are read from the source release of annoy named below, fetched with pip (so pip's index, proxy
and cache settings apply), checked against its SHA-256 and unpacked under build/ once.

Compiler flags: `-march=native` by default, as annoy's own build does, because the index search
is the agent's hot loop. An image that must run on any x86-64 sets DKNN_COMPILER_ARGS
(deploy/docker/build.sh does), which replaces the architecture flags.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

HERE = Path(__file__).resolve().parent
ANNOY_SOURCE = "annoy==1.17.3"
ANNOY_SDIST_SHA256 = "9cbfebefe0a5f843eba29c6be4c84d601f4f41ad4ded0486f1b88c3b07739c15"
ANNOY_HEADERS = ("annoylib.h", "kissrandom.h")
HEADER_DIR = HERE / "build" / "annoy-1.17.3-headers"


def annoy_headers() -> Path:
    """The directory holding Annoy's headers, fetched and verified on first use."""
    if all((HEADER_DIR / name).is_file() for name in ANNOY_HEADERS):
        return HEADER_DIR
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*command, "--dest", tmp, ANNOY_SOURCE], check=True)
        sdist = next(Path(tmp).glob("annoy-*.tar.gz"))
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != ANNOY_SDIST_SHA256:
            raise SystemExit(f"{sdist.name}: SHA-256 {digest}, expected {ANNOY_SDIST_SHA256}")
        HEADER_DIR.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as archive:
            for name in (*ANNOY_HEADERS, "LICENSE"):
                source = "src/" + name if name != "LICENSE" else name
                member = archive.extractfile(f"annoy-1.17.3/{source}")
                if member is None:
                    raise SystemExit(f"{sdist.name} has no {source}")
                (HEADER_DIR / name).write_bytes(member.read())
    return HEADER_DIR


def compiler_args() -> list[str]:
    # -fno-associative-math keeps Annoy's distance sums in the order its own build uses.
    common = ["-O3", "-ffast-math", "-fno-associative-math"]
    if "DKNN_COMPILER_ARGS" in os.environ:
        return common + shlex.split(os.environ["DKNN_COMPILER_ARGS"])
    return common + (["-march=native"] if platform.machine() in ("x86_64", "AMD64") else [])


setup(
    ext_modules=[
        Pybind11Extension(
            "agent.engine._annoy_batch",
            ["agent/engine/_annoy_batch.cpp"],
            include_dirs=[str(annoy_headers())],
            cxx_std=17,
            extra_compile_args=compiler_args(),
        )
    ],
    cmdclass={"build_ext": build_ext},
)
