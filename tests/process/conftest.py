"""Fixtures for process tracking: the compiled C target and a line-protocol driver."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from procdriver import Driver

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
