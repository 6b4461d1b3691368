"""Code-shape test: no long functions in ``src/songflow`` (docs/architecture.md#code-shape).

A function (or method) counts from its ``def`` line to its last line, decorators excluded
(``end_lineno - lineno + 1``), docstring and comments included. The limit is :data:`MAX_LINES`.

Exempt are **data tables**: functions whose body is, after an optional docstring, one ``return`` of a
literal (numbers, strings, booleans, None, and lists / tuples / sets / dicts of those, nested to any
depth). Such a function holds data, not logic; splitting it would only scatter the table. Anything else
that must stay long goes into :data:`ALLOWED` with its reason; the list is empty and should stay short.

The server's app factory has a tighter limit (:data:`CREATE_APP_MAX_LINES`): routes live in their own
modules and the factory only wires them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import songflow

PACKAGE = Path(songflow.__file__).parent
MAX_LINES = 80
CREATE_APP_MAX_LINES = 40
CREATE_APP = ("interfaces/server/app.py", "create_app")

#: ``"relative/path.py:Qualified.name"`` -> why it may stay longer than MAX_LINES
ALLOWED: dict[str, str] = {}

_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
Func = ast.FunctionDef | ast.AsyncFunctionDef


def _is_literal(node: ast.AST) -> bool:
    """A constant, or a list / tuple / set / dict whose items are all literals."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return isinstance(node.operand, ast.Constant)
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return all(_is_literal(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is not None and _is_literal(k) for k in node.keys) and all(
            _is_literal(v) for v in node.values
        )
    return False


def is_data_table(func: Func) -> bool:
    """True when the body is ``[docstring] return <literal>``."""
    body = list(func.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return (
        len(body) == 1
        and isinstance(body[0], ast.Return)
        and body[0].value is not None
        and _is_literal(body[0].value)
    )


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, Func]]:
    """Every function and method with its qualified name (``Class.method``, ``outer.inner``)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, _FUNCTIONS):
            yield f"{prefix}{node.name}", node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def _length(func: Func) -> int:
    assert func.end_lineno is not None
    return func.end_lineno - func.lineno + 1


def long_functions(root: Path = PACKAGE, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """``("path.py:qualname", n_lines)`` for every non-exempt function longer than ``limit``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, func in _functions(tree):
            where = f"{rel}:{name}"
            if _length(func) > limit and not is_data_table(func) and where not in ALLOWED:
                found.append((where, _length(func)))
    return found


def test_no_function_longer_than_the_limit():
    offenders = long_functions()
    listing = "\n".join(f"  {where} ({n} lines)" for where, n in offenders)
    assert not offenders, f"functions over {MAX_LINES} lines (split them, docs/architecture.md):\n{listing}"


def test_allow_list_entries_exist_and_are_still_needed():
    for where, reason in ALLOWED.items():
        assert reason.strip(), f"{where}: give the reason"
        rel, name = where.split(":")
        tree = ast.parse((PACKAGE / rel).read_text(encoding="utf-8"))
        lengths = {n: _length(f) for n, f in _functions(tree)}
        assert name in lengths, f"{where}: no such function"
        assert lengths[name] > MAX_LINES, f"{where}: now {lengths[name]} lines, drop it from ALLOWED"


def test_server_app_factory_is_short():
    rel, name = CREATE_APP
    path = PACKAGE / rel
    tree = ast.parse(path.read_text(encoding="utf-8"))
    funcs = {n: f for n, f in _functions(tree)}
    assert name in funcs, f"{rel} has no {name}"
    n = _length(funcs[name])
    assert n <= CREATE_APP_MAX_LINES, f"{rel}:{name} is {n} lines (limit {CREATE_APP_MAX_LINES})"


def test_data_table_rule():
    def parse(src: str) -> ast.FunctionDef:
        node = ast.parse(src).body[0]
        assert isinstance(node, ast.FunctionDef)
        return node

    assert is_data_table(parse('def f():\n    """Table."""\n    return {"a": [1, -2.5, None], "b": (True,)}'))
    assert is_data_table(parse("def f():\n    return [('x', 1), ('y', 2)]"))
    assert not is_data_table(parse("def f(n):\n    return [n, 1]"))  # a name is not data
    assert not is_data_table(parse("def f():\n    x = 1\n    return [x]"))
    assert not is_data_table(parse("def f():\n    return {**base}"))
    assert not is_data_table(parse("def f():\n    return [g() for g in h]"))
