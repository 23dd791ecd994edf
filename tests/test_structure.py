"""The package's shape: packages in one order (every import points down it), no import cycles,
no file over 400 lines, every module and package with a one-line statement of its job."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "blockexp"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """blockexp modules that ``name`` imports at run time (``TYPE_CHECKING`` blocks excluded)."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("blockexp") and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_cycles_between_modules():
    modules = _modules()
    packages = {n for n, p in modules.items() if p.name == "__init__.py"}
    graph = {n: {d for d in deps if d not in packages} for n, deps in _graph().items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state and node not in packages:
            visit(node, [node])
    assert not cycles, cycles


#: The packages from the top; a module may import only from its own package or one below it.
#: ``cli`` stands for the command wiring at the root (``blockexp``, ``blockexp.__main__``,
#: ``blockexp.cli``, ``blockexp.commands``); ``docs/architecture.md`` draws this graph (``scripts/draw_architecture.py``).
ORDER = (
    "cli",
    "sweep",
    "compare",
    "trace",
    "evaluation",
    "training",
    "data",
    "errors",
    "expanders",
    "io",
    "layers",
    "console",
)
MAX_LINES = 400


def package_of(module: str) -> str:
    """The package (an entry of :data:`ORDER`) that a ``blockexp`` module belongs to."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("cli", "commands", "__main__"):
        return "cli"
    return parts[1]


def package_edges() -> dict[tuple[str, str], list[str]]:
    """``(importer package, imported package)`` -> the module imports behind it."""
    edges: dict[tuple[str, str], list[str]] = {}
    for name, deps in _graph().items():
        for dep in deps:
            a, b = package_of(name), package_of(dep)
            if a != b:
                edges.setdefault((a, b), []).append(f"{name} -> {dep}")
    return edges


def allowed_directions() -> dict[tuple[str, str], bool]:
    """Every pair of packages and whether the first may import the second."""
    return {(a, b): ORDER.index(a) < ORDER.index(b) for a in ORDER for b in ORDER if a != b}


def test_every_package_is_in_the_order():
    found = {package_of(name) for name in _modules()}
    assert found == set(ORDER), f"packages not in ORDER: {found - set(ORDER)}"


def test_imports_point_down_the_package_order():
    allowed = allowed_directions()
    wrong = {pair: modules for pair, modules in package_edges().items() if not allowed[pair]}
    assert not wrong, "imports that point up the order (see ORDER): " + "; ".join(
        f"{a} -> {b}: {', '.join(sorted(m))}" for (a, b), m in sorted(wrong.items())
    )


def test_the_order_is_not_a_wish_list():
    """Each package imports the next one down somewhere or is imported by the one above (an
    entry of ORDER that nothing connects to would make the order meaningless)."""
    edges = package_edges()
    for a in ORDER:
        assert any(a in pair for pair in edges), f"{a}: no import to or from another package"


def test_no_source_file_is_over_the_line_limit():
    long = {
        str(path.relative_to(SRC)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_every_package_says_what_it_may_import():
    """The ``__init__`` docstring of each package names the packages it may import (all below it
    in ORDER, none above)."""
    for package in ORDER[1:]:
        init = PACKAGE / package / "__init__.py"
        if not init.exists():  # a single-module package (errors.py, console.py)
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc or "Imports no other package" in doc, package
        above = ORDER[: ORDER.index(package)]
        for other in above:
            assert f"blockexp.{other}`" not in doc.split("May import", 1)[-1], (package, other)


def test_registration_refuses_contradicting_declarations():
    from blockexp.expanders import Expander, ExpanderConfigError, register_expander

    class NoPlan(Expander):
        streamable = True

    class HookUndeclared(Expander):
        def export_model(self, model):
            return model

    class LoaderUndeclared(Expander):
        @classmethod
        def load_exported(cls, directory, dtype=None):
            raise NotImplementedError

    class AlwaysButDepends(Expander):
        preserves_function = True

        def is_identity(self):
            return False

    for cls, message in (
        (NoPlan, "does not implement plan"),
        (HookUndeclared, "has_export_hook = False but it overrides export_model"),
        (LoaderUndeclared, "custom_export_format = False but it overrides load_exported"),
        (AlwaysButDepends, "overrides is_identity"),
    ):
        with pytest.raises(ExpanderConfigError, match=message):
            register_expander(cls)


def test_the_architecture_picture_is_drawn_from_the_code():
    import importlib.util

    path = SRC.parent / "scripts" / "draw_architecture.py"
    spec = importlib.util.spec_from_file_location("draw_architecture", path)
    draw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(draw)
    text = draw.DOC.read_text()
    assert draw.render(text) == text, "run python scripts/draw_architecture.py"
