"""The package's shape: no import cycles, the layer wing below the expanders, every module with a
one-line statement of its job, and old import paths that still work (with a warning)."""

from __future__ import annotations

import ast
import importlib
import warnings
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


def test_streaming_importance_and_layers_do_not_import_the_expanders():
    graph = _graph()
    for name, deps in graph.items():
        if name in ("blockexp.streaming", "blockexp.importance") or name.startswith(
            "blockexp.layers"
        ):
            assert not {d for d in deps if d.startswith("blockexp.expanders")}, (name, deps)


def test_every_module_states_its_job_in_one_line():
    for name, path in _modules().items():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{name} has no module docstring"
        first = doc.split("\n\n")[0]
        assert "\n" not in first and len(first) <= 100, f"{name}: its job in one line: {first!r}"


OLD_PATHS = [
    ("blockexp.arch", "get_arch", "blockexp.layers.arch"),
    ("blockexp.plan", "Plan", "blockexp.layers.plan"),
    ("blockexp.expanders.surgery", "apply_plan", "blockexp.layers.surgery"),
    ("blockexp.expanders", "zero_residual_writers", "blockexp.layers"),
    ("blockexp.precision", "select_attn_implementation", "blockexp.attention"),
    ("blockexp.precision", "flash_attn_available", "blockexp.attention"),
    ("blockexp.precision", "shard_fsdp2", "blockexp.distributed"),
    ("blockexp.precision", "packed_position_ids", "blockexp.data.packing"),
    ("blockexp.precision", "flatten_packed_batch", "blockexp.data.packing"),
    ("blockexp.module", "load_expanded", "blockexp.loading"),
    ("blockexp.module", "resolve_tokenizer_spec", "blockexp.loading"),
    ("blockexp.module", "frozen_fingerprint", "blockexp.loading"),
    ("blockexp.module", "check_fingerprint", "blockexp.loading"),
    ("blockexp.module", "export_dtype", "blockexp.loading"),
    ("blockexp.cli", "plan_summary", "blockexp.expanders.dry_run"),
    ("blockexp.cli", "rebuild_from_checkpoint", "blockexp.export"),
    ("blockexp.data.sft", "IGNORE_INDEX", "blockexp.data.collate"),
    ("blockexp.data.sft", "pad_collate", "blockexp.data.collate"),
    ("blockexp.callbacks.trace", "generate_answers", "blockexp.continual.generation"),
    ("blockexp.callbacks.trace", "render_summary", "blockexp.continual.report"),
]


@pytest.mark.parametrize("old, name, new", OLD_PATHS, ids=[f"{o}.{n}" for o, n, _ in OLD_PATHS])
def test_old_import_paths_work_with_a_deprecation_warning(old, name, new):
    with pytest.warns(DeprecationWarning, match=f"{old}.{name} has moved to {new}.{name}"):
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(new), name)


def test_moved_generators_still_run_from_their_old_module():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import blockexp.data.trace_synthetic as old  # noqa: F401

        importlib.reload(old)
    assert any("scripts/make_trace_data.py" in str(w.message) for w in caught)
    assert callable(old.generate_micro_trace)


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


def test_deprecated_trainable_modules_hook_still_selects(tiny_llama):
    """A strategy written for the earlier hook warns at registration and still trains what it
    names."""
    from blockexp.expanders import Expander, register_expander
    from blockexp.expanders.base import _REGISTRY

    class LegacyEmbeddingOnly(Expander):
        def trainable_modules(self, model, plan, arch):
            return [arch.embeddings(model)]

    with pytest.warns(DeprecationWarning, match="trainable_modules\\(\\) is deprecated"):
        register_expander(LegacyEmbeddingOnly)
    try:
        expansion = LegacyEmbeddingOnly().expand(tiny_llama(2))
        assert expansion.trainable == {"model.embed_tokens.weight"}
    finally:
        _REGISTRY.pop("LegacyEmbeddingOnly")
