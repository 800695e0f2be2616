"""The layout as a reader checks it: imports run only from a higher layer to a lower one, there are no import cycles,
and the README's API example runs as written."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tvm_theory", "kernels", "toy", "full_scale", "proofs")

# What each part may import from the project (prefixes; a module may always import from its own part). Lower layers
# first: the method, its analysis, the kernel; then the toy and full-scale libraries, whose studies are on top.
ALLOWED = {
    "tvm_theory.analysis": ("tvm_theory",),
    "tvm_theory": (),  # the method: only its own top-level modules, never its analysis (see layer_violations)
    "kernels": (),
    "toy": ("tvm_theory", "kernels"),
    "proofs": ("tvm_theory", "kernels", "toy"),
    "full_scale.model": ("kernels", "tvm_theory"),
    "full_scale.data": ("full_scale.distributed", "tvm_theory"),
    "full_scale.evaluation": ("full_scale.data", "full_scale.distributed", "tvm_theory"),
    "full_scale.experiments": ("full_scale", "toy", "tvm_theory", "kernels"),
    "full_scale": ("full_scale", "tvm_theory", "kernels"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports anywhere in its file (lazy imports inside functions included). ``from
    P import a, b`` counts as importing P itself unless every name is a submodule of P."""
    found = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            targets = subs if len(subs) == len(node.names) else [target, *subs]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def part_of(name: str) -> str:
    return max((p for p in ALLOWED if name == p or name.startswith(p + ".")), key=len)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in graph.items():
        part = part_of(src)
        for dst in targets:
            own = dst == part or dst.startswith(part + ".")
            if part == "tvm_theory":
                own = part_of(dst) == "tvm_theory"  # the method never imports its analysis
            if not own and not any(dst == a or dst.startswith(a.rstrip(".") + ".") for a in ALLOWED[part]):
                bad.append(f"{src} -> {dst}")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(u: str, stack: list[str]) -> None:
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == "open":
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v, stack)
        stack.pop()
        state[u] = "done"

    for u in sorted(graph):
        if u not in state:
            visit(u, [])
    return found


def test_imports_run_from_higher_layers_to_lower_ones():
    graph = import_graph()
    assert len(graph) > 50 and graph["full_scale.train"] >= {"full_scale.config", "tvm_theory.loss"}
    assert layer_violations(graph) == []


def test_there_are_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checks_find_a_planted_violation_and_a_planted_cycle():
    graph = import_graph()
    planted = {**graph, "tvm_theory.loss": graph["tvm_theory.loss"] | {"tvm_theory.analysis.bounds"},
               "kernels.attention": graph["kernels.attention"] | {"full_scale.model.dit"}}
    assert set(layer_violations(planted)) == {"tvm_theory.loss -> tvm_theory.analysis.bounds",
                                              "kernels.attention -> full_scale.model.dit"}
    looped = {**graph, "tvm_theory.path": graph["tvm_theory.path"] | {"tvm_theory.loss"}}
    assert any(c[0] == c[-1] and "tvm_theory.path" in c for c in cycles(looped))


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no python example"
    return blocks[0]


@pytest.mark.timeout(600)
def test_readme_api_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything it writes stays in the test's folder
    exec(compile(readme_example(), "README.md", "exec"), {"__name__": "readme_example"})
