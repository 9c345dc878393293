"""Project-level checks: lint, types, the README's code, the CLI entry points."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


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
