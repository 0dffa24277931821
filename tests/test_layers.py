"""The house's rules, read from the code's own imports (DESIGN.md):

    floor (errors, progress, terminal, images, grid, outputs, devices, host_memory, parking) < models < generation
    < evaluation < training < server < toy, testing, cli

A module imports only from its own layer or the layers below; the import graph has no circle; the
toy world is imported only by the CLI; no library module imports the test fixtures (``testing``);
training never imports the DreamBench runner; library files stay under 400 lines."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dreambooth"
LAYERS = {"models": 1, "generation": 2, "evaluation": 3, "training": 4, "server": 5, "ui": 6, "toy": 9, "testing": 9, "cli": 9}
TOP = ("toy", "testing", "cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """dreambooth modules ``path`` imports (absolute or relative, at any depth of the file)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dreambooth")}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if not target.startswith("dreambooth"):
                continue
            modules = [f"{target}.{a.name}" for a in node.names      # "from . import progress" names a module
                       if (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).with_suffix(".py").exists()]
            found |= set(modules) if len(modules) == len(node.names) else {target, *modules}
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return 0 if len(parts) == 1 else 9
    return LAYERS.get(parts[1], 0)


FILES = sorted(PACKAGE.rglob("*.py"))
GRAPH = {module_name(f): imports(f) - {module_name(f)} for f in FILES}


def test_no_import_runs_up_a_layer():
    wrong = [f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets if layer(t) > layer(m)]
    assert not wrong, wrong


def test_the_import_graph_has_no_circle():
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(GRAPH.get(m, ())):
            t = t if t in GRAPH else t.rsplit(".", 1)[0]      # "from x import name" of a module-level name
            if t not in GRAPH or t.endswith("__init__"):
                continue
            if state.get(t) == 1 and t != "dreambooth":
                pytest.fail("circle: " + " -> ".join(path + [m, t]))
            if t not in state:
                visit(t, path + [m])
        state[m] = 2
    for m in GRAPH:
        if m not in state:
            visit(m, [])


def test_the_toy_world_and_test_fixtures_stay_on_top():
    for m, targets in GRAPH.items():
        if m.split(".")[1:2] in (["toy"], ["cli"], ["testing"]) or m == "dreambooth.__main__":
            continue
        assert not [t for t in targets if t.split(".")[1:2] in (["toy"], ["testing"], ["cli"])], m
    users_of_toy = {m for m, targets in GRAPH.items() if any(t.startswith("dreambooth.toy") for t in targets)}
    assert {m.split(".")[1] for m in users_of_toy} <= {"cli", "toy"}


def test_training_never_imports_the_dreambench_runner():
    assert not [(m, t) for m, targets in GRAPH.items() if m.startswith("dreambooth.training")
                for t in targets if t.startswith("dreambooth.evaluation.dreambench")]


def test_library_files_are_small():
    big = {module_name(f): n for f in FILES if module_name(f).split(".")[1:2] not in ([p] for p in TOP)
           and (n := len(f.read_text().splitlines())) > 400}
    assert not big, big


def test_the_checker_sees_real_imports():
    assert "dreambooth.generation.sampling" in GRAPH["dreambooth.training.prior"]
    assert "dreambooth.progress" in GRAPH["dreambooth.generation.xyz"]
    assert layer("dreambooth.training.trainer") > layer("dreambooth.evaluation.metrics")
