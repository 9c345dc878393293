"""Project-level checks: lint, types, the README's code, the CLI entry points."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _env_without_blas_threads() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}


def test_ruff() -> None:
    res = run(sys.executable, "-m", "ruff", "check", "src", "tests", "benchmarks", "tools",
              "examples")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_strict_on_the_public_api() -> None:
    res = run(sys.executable, "-m", "mypy", "src/writewatch")
    assert res.returncode == 0, res.stdout + res.stderr


def test_readme_python_examples_run() -> None:
    """Every ```python block of the README runs (```py blocks are sketches needing a PID)."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert blocks
    for code in blocks:
        res = run(sys.executable, "-W", "error::UserWarning", "-c", code)
        assert res.returncode == 0, f"README example failed:\n{code}\n{res.stderr}"


def test_console_script_and_module_agree() -> None:
    a = run(sys.executable, "-m", "writewatch", "features", "--json")
    assert a.returncode == 0, a.stderr
    assert '"auto"' in a.stdout and '"backends"' in a.stdout


def test_features_report_is_consistent() -> None:
    import writewatch
    from writewatch.features import PREFERENCE
    f = writewatch.features()
    assert f.kernel
    # auto is the first usable of uffd-async, uffd-wp-sync, soft-dirty
    assert f.auto == next((b for b in PREFERENCE if f.backends[b].usable), None)
    if not f.mechanisms["WP_ASYNC"].usable:  # e.g. Linux 6.1 in the kernel matrix
        assert not f.backends["uffd-async"].usable
        assert "6.7" in (f.backends["uffd-async"].fix or "")
        if f.mechanisms["uffd-wp"].usable:
            assert f.auto == "uffd-wp-sync"
    if f.auto is not None:
        assert f.backends[f.auto].usable
    for b in f.backends.values():
        assert b.usable or b.detail  # every unusable backend says why
    if not f.mechanisms["PAGEMAP_SCAN"].usable:
        pytest.skip("PAGEMAP_SCAN absent: " + f.mechanisms["PAGEMAP_SCAN"].detail)
    assert f.mechanisms["PAGE_IS_WRITTEN"].usable


def test_core_import_is_light() -> None:
    code = ("import sys, writewatch, writewatch.process, writewatch.snapshot, "
            "writewatch.monitor; print(sorted({m.split('.')[0] for m in sys.modules}))")
    res = run(sys.executable, "-c", code)
    assert res.returncode == 0, res.stderr
    for heavy in ("rich", "matplotlib", "xxhash", "zstandard", "hypothesis"):
        assert f"'{heavy}'" not in res.stdout, f"import writewatch loads {heavy}"


@pytest.mark.parametrize("given", [None, "3"])
def test_the_command_launches_programs_with_the_environment_it_was_given(given) -> None:
    """The command loads numpy with one OpenBLAS thread (writewatch/_startup.py); the
    programs it runs see OPENBLAS_NUM_THREADS as the user left it."""
    env = _env_without_blas_threads()
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    res = subprocess.run([sys.executable, "-m", "writewatch", "run", "--quiet", "--",
                          "sh", "-c", "echo BLAS=${OPENBLAS_NUM_THREADS-unset}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert f"BLAS={given or 'unset'}" in res.stdout.split(), res.stdout


def test_only_the_command_counts_as_the_command() -> None:
    from writewatch._startup import is_the_command
    assert is_the_command("/usr/local/bin/writewatch", ["python3", "/usr/local/bin/writewatch"])
    assert is_the_command("-m", ["python3", "-m", "writewatch", "features"])
    assert is_the_command("-m", ["python3", "-m", "writewatch.cli"])
    assert not is_the_command("app.py", ["python3", "app.py", "writewatch"])
    assert not is_the_command("-c", ["python3", "-c", "import writewatch"])


def test_the_command_loads_numpy_with_one_blas_thread() -> None:
    env = _env_without_blas_threads()
    code = ("import sys; sys.argv[0] = {!r}; import os, writewatch; "
            "print(len(os.listdir('/proc/self/task')), os.environ.get('OPENBLAS_NUM_THREADS'))")
    def threads(argv0: str) -> list[str]:
        res = subprocess.run([sys.executable, "-c", code.format(argv0)], capture_output=True,
                             text=True, timeout=120, env=env)
        assert res.returncode == 0, res.stderr
        return res.stdout.split()
    program = threads("app.py")
    if program[0] == "1":
        pytest.skip("numpy's BLAS starts no thread of its own here (one CPU, or no OpenBLAS)")
    assert threads("/usr/bin/writewatch") == ["1", "None"], program
