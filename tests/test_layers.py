"""Architecture test: imports flow one way (docs/architecture.md#layers).

audio/text/nn -> models -> sampling -> tasks -> pipeline -> interfaces. A module may import its own layer
or lower ones; ``songflow.sampling`` never imports ``songflow.models``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import songflow

PACKAGE = Path(songflow.__file__).parent
RANK = {
    "errors": 0,
    "config": 0,
    "fileio": 0,
    "audio": 0,
    "text": 0,
    "nn": 0,
    "models": 1,
    "checkpoint": 1,
    "data": 1,
    "eval": 1,
    "sampling": 2,
    "requests": 2,
    "requests_v15": 2,
    "tasks": 3,
    "pipeline": 4,
    "pipeline_v15": 4,
    "training": 4,
    "families": 5,
    "interfaces": 6,
}
FORBIDDEN = {
    ("sampling", "models"),
    ("sampling", "checkpoint"),
    ("models", "sampling"),
    ("pipeline", "training"),  # inference never imports training code
    ("tasks", "training"),
    ("training", "pipeline"),
    ("training", "pipeline_v15"),
    ("pipeline_v15", "training"),
}


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("songflow.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("songflow."):
            found.add(node.module)
    return found


def test_every_package_part_has_a_layer():
    parts = {
        p.stem
        for p in PACKAGE.iterdir()
        if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())
    }
    assert parts - {"__init__", "__main__"} <= set(RANK), f"unranked parts: {parts - set(RANK)}"


def test_imports_flow_one_way():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        own = rel.parts[0].removesuffix(".py")
        if own in ("__init__", "__main__"):
            continue
        for module in _imports(path):
            other = _layer(module)
            if RANK[other] > RANK[own] or (own, other) in FORBIDDEN:
                bad.append(f"{rel} imports {module}")
    assert not bad, "layering violations:\n" + "\n".join(bad)
