"""The package's layers (written in ``writewatch/__init__.py`` and docs/architecture.md): a
module imports only from its own layer or the layers below, and the core has no import
cycles. Read from the source (every ``import``, also inside functions), not from a run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "writewatch"

#: module (or package prefix) -> layer (DESIGN.md's numbers; the fractions order what shares
#: a layer); the longest matching prefix wins
LAYERS = {
    "errors": 0, "pages": 0, "_startup": 0,
    "_uapi": 1,
    "kernel": 2, "model": 2.5,
    "backends": 3,
    "features": 4, "tracker": 4.2, "process": 4.2,
    "__init__": 4.5,  # the facade: the public API, applications imported lazily
    "snapshot": 5, "monitor": 5, "lab": 5, "exporter": 5,
    "cli": 6, "__main__": 6,
}
#: the applications: each stands on the core, none on another
APPLICATIONS = ("snapshot", "monitor", "lab", "exporter")

#: imports that go up a layer, and why they may
EXCEPTIONS = {
    # documented names of the model kept for users' scripts: aliases of the lab's modules
    ("model.races", "lab.races"), ("model.designs", "lab.designs"),
    ("model.fidelity", "lab.fidelity"), ("model.replay", "lab.replay"),
    ("model.workloads", "lab.workloads"), ("model.races", "cli.model"),
    # Profile "running" is probed on the real kernel, which is the lab's job
    ("model.profiles", "lab.profiles"),
    # the facade names the applications' entry points and imports them when first used
    ("__init__", "snapshot"), ("__init__", "snapshot.live"), ("__init__", "monitor"),
    ("__init__", "monitor.api"),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, at module level)`` of every writewatch import in ``path``
    ("" is the package itself)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if package == "__init__":
        package = ""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body} | {id(n) for stmt in tree.body if isinstance(stmt, ast.If)
                                        for n in stmt.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            elif (node.module or "").startswith("writewatch"):
                mod = node.module.removeprefix("writewatch").lstrip(".")  # type: ignore[union-attr]
            else:
                continue
            # "from PKG import x": the submodule PKG.x where there is one, else PKG itself
            targets = [f"{mod}.{a.name}".strip(".") if _is_module(f"{mod}.{a.name}") else mod
                       for a in node.names]
            out += [(t, node.lineno, id(node) in top) for t in targets]
        elif isinstance(node, ast.Import):
            out += [(a.name.removeprefix("writewatch").lstrip("."), node.lineno, id(node) in top)
                    for a in node.names if a.name.startswith("writewatch")]
    return out


def _is_module(dotted: str) -> bool:
    path = SRC.joinpath(*dotted.strip(".").split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _layer(module: str) -> float:
    if not module:
        return LAYERS["__init__"]  # "from writewatch import x": the facade
    best, layer = "", float(LAYERS["__init__"])
    for prefix, n in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
            best, layer = prefix, n
    return layer


def _package(module: str) -> str:
    return module.split(".")[0]


MODULES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_down_the_layers(path: Path) -> None:
    me = _module_name(path)
    bad = []
    for target, line, _ in _imports(path):
        if target.startswith("_uapi") or (me, target) in EXCEPTIONS:
            continue
        if _layer(target) > _layer(me):
            bad.append(f"line {line}: {me} (layer {_layer(me)}) imports {target} "
                       f"(layer {_layer(target)})")
        elif (_package(me) in APPLICATIONS and _package(target) in APPLICATIONS
              and _package(me) != _package(target)):
            bad.append(f"line {line}: application {_package(me)} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_in_the_core() -> None:
    """Module-level imports among layers 0-4 form no cycle (function-level imports are lazy
    and do not count)."""
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        me = _module_name(path)
        if _layer(me) >= 5:
            continue
        graph[me] = {t for t, _, top in _imports(path) if top and _layer(t) < 5 and t != me
                     and not me.startswith(t + ".")}  # a package's own __init__ runs first
    names = set(graph)
    for deps in graph.values():
        deps &= names  # "from .pkg import name" may name a function, not a module
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if seen.get(dep) == 1:
                cycle = [*stack[stack.index(dep):], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in seen:
                visit(dep)
        stack.pop()
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node)


def test_the_core_import_is_numpy_only() -> None:
    import subprocess
    import sys

    code = ("import sys, writewatch; "
            "print(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    third_party = {m for m in eval(out)
                   if not m.startswith("_") and m not in ("writewatch", "numpy")}
    assert not third_party, f"import writewatch loads {third_party}"
