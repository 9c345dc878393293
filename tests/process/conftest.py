"""Fixtures for process tracking: the compiled C target and a line-protocol driver."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from procdriver import Driver, TreeDriver

TARGETS = Path(__file__).resolve().parent.parent / "targets"


@pytest.fixture(scope="session")
def writer_bin(tmp_path_factory: pytest.TempPathFactory) -> str:
    prebuilt = os.environ.get("WRITEWATCH_TEST_TARGETS")
    if prebuilt:
        # a guest without a compiler (tools/kernel_matrix.py cross-compiles the targets):
        # the binary must be there, a missing one is the tool's failure, not a skip
        path = Path(prebuilt) / "writer"
        assert os.access(path, os.X_OK), f"WRITEWATCH_TEST_TARGETS has no writer: {path}"
        return str(path)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build tests/targets/writer.c")
    out = tmp_path_factory.mktemp("targets") / "writer"
    subprocess.run([cc, "-O1", "-Wall", "-pthread", "-o", str(out),
                    str(TARGETS / "writer.c")], check=True)
    return str(out)


def _build(tmp_path_factory: pytest.TempPathFactory, name: str) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip(f"no C compiler (cc) to build tests/targets/{name}.c")
    out = tmp_path_factory.mktemp("targets") / name
    subprocess.run([cc, "-O1", "-Wall", "-pthread", "-o", str(out),
                    str(TARGETS / f"{name}.c")], check=True)
    return str(out)


@pytest.fixture(scope="session")
def tree_bin(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _build(tmp_path_factory, "tree")


@pytest.fixture(scope="session")
def states_bin(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/targets/states.c: a target that puts itself in a given state (seccomp...)."""
    return _build(tmp_path_factory, "states")


@pytest.fixture(params=["c", "python"])
def tree_argv(request: pytest.FixtureRequest, tree_bin: str) -> list[str]:
    """How to start the tree target (tests/targets/tree.c, or its Python twin pytree.py);
    append NPAGES [SHMPATH]."""
    if request.param == "c":
        return [tree_bin, "tree"]
    return [sys.executable, str(TARGETS / "pytree.py")]


@pytest.fixture
def tree_target(tree_argv: list[str]) -> Iterator[TreeDriver]:
    d = TreeDriver.popen([*tree_argv, "64"])
    yield d
    d.close()


@pytest.fixture
def c_target(writer_bin: str) -> Iterator[Driver]:
    d = Driver.popen([writer_bin, "interactive", "256"])
    yield d
    d.close()


@pytest.fixture
def py_target() -> Iterator[Driver]:
    d = Driver.popen([sys.executable, str(TARGETS / "pywriter.py"), "256"])
    yield d
    d.close()
