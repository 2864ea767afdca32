"""The package's shape, checked: imports only point down the layers, modules and functions stay short.

Layers, lowest first (a module may import its own package and any lower layer, never a higher one):

0  errors, options, manifest,       foundations: error types, the settings base class, the run record,
   machine, names, feeds            the machine profile (instruction-set class, GPU, providers; no torch import);
                                    names that become paths, and paths that must stay inside a folder; random
                                    token inputs (numpy only)
1  data, models, measure, deploy    task data; architectures, artifacts; timing/monitoring; the torch-free predictor
2  train                            the training loop
3  methods                          fine-tuning methods (registry)
4  compress, export                 pruning/distillation; ONNX export, optimisation, quantisation
5  config                           typed pipeline configs
6  stages                           one file per stage type
7  pipeline                         the runner
8  bench                            benchmark and inspection commands
9  cli                              the command line
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "compresstune"

LAYERS = {
    "__init__": 0, "__main__": 9, "errors": 0, "options": 0, "manifest": 0, "machine": 0, "names": 0, "feeds": 0,
    "data": 1, "models": 1, "measure": 1, "deploy": 1,
    "train": 2,
    "methods": 3,
    "compress": 4, "export": 4,
    "config": 5,
    "stages": 6,
    "pipeline": 7,
    "bench": 8, "search": 8,
    "cli": 9,
}  # fmt: skip
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _top(rel_parts: tuple[str, ...]) -> str:
    return rel_parts[0].removesuffix(".py")


def _imports(path: Path, rel: tuple[str, ...] | None = None) -> list[tuple[int, str]]:
    """(line, top-level compresstune package) of every import of the package in ``path``, lazy ones included;
    ``rel``: the module's path inside the package (default: from where ``path`` lies)."""
    rel = rel or path.relative_to(PKG).with_suffix("").parts
    pkg_parts = rel[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = list(pkg_parts[: len(pkg_parts) - (node.level - 1)] if node.level > 1 else pkg_parts)
                target = base + (node.module.split(".") if node.module else [])
                if not target:  # `from . import x` at the package root
                    target = [a.name for a in node.names][:1]
            elif node.module and node.module.split(".")[0] == "compresstune":
                target = node.module.split(".")[1:] or [a.name for a in node.names][:1]
            else:
                continue
            out.append((node.lineno, target[0]))
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "compresstune" and len(parts) > 1:
                    out.append((node.lineno, parts[1]))
    return out


def test_every_module_has_a_layer():
    tops = {_top(p.relative_to(PKG).parts) for p in PKG.rglob("*.py")}
    assert tops <= set(LAYERS), f"give these a layer in LAYERS (and in docs/ARCHITECTURE.md): {tops - set(LAYERS)}"


def test_imports_only_point_down():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        me = _top(path.relative_to(PKG).parts)
        for line, target in _imports(path):
            foundation = target in ("errors", "options", "manifest", "machine", "names")
            if target != me and LAYERS.get(target, 0) >= LAYERS[me] and not foundation:
                bad.append(
                    f"{path.relative_to(PKG.parent)}:{line} ({me}, layer {LAYERS[me]}) imports {target} "
                    f"(layer {LAYERS.get(target)})"
                )
    assert not bad, "imports that run sideways or up the layers:\n" + "\n".join(bad)


def test_the_layer_check_sees_relative_and_lazy_imports(tmp_path):
    src = tmp_path / "probe.py"
    src.write_text(
        "def f():\n    from ..stages import base\n    from compresstune.pipeline import runner\n"
        "    from .batching import collate\n"
    )
    assert _imports(src, ("data", "probe")) == [(2, "stages"), (3, "pipeline"), (4, "data")]


def test_modules_and_functions_are_short():
    long_modules, long_functions = [], []
    for path in sorted(PKG.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(PKG.parent)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(PKG.parent)}:{node.lineno} {node.name}: {n} lines")
    assert not long_modules, long_modules
    assert not long_functions, long_functions
