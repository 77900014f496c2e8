"""The packages of vgpumon are layers, and imports run one way, lowest first.

    config, linux  ->  model  ->  ollama  ->  sources  ->  snapshot  ->  http  ->  daemon  ->  cli
                                                                                   doctor

A package may import its own modules and any package on a lower layer, never one on its own
layer or above; `vgpumon/__init__.py` (the version) is importable by all. docs/architecture.md
explains each layer. Imports inside functions count too: a late import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "vgpumon"

LAYERS = {
    "config": 0, "linux": 0,
    "model": 1,
    "ollama": 2,
    "sources": 3,
    "snapshot": 4,
    "http": 5,
    "daemon": 6, "doctor": 6,
    "cli": 7,
    "__main__": 8,
}


def layer_of(module: str) -> str | None:
    """The top-level package (or module) of a ``vgpumon.…`` name; None for ``vgpumon``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "vgpumon":  # from vgpumon import x: x may be a package
                found.update(f"vgpumon.{alias.name}" for alias in node.names
                             if alias.name in LAYERS)
    return {name for name in found if name == "vgpumon" or name.startswith("vgpumon.")}


def dependencies() -> dict[str, set[str]]:
    """module path -> the layers it imports (its own excluded)."""
    result = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        if rel.parts == ("__init__",):
            continue
        own = rel.parts[0]
        result[rel.as_posix()] = {layer for name in imports_of(path)
                                  if (layer := layer_of(name)) is not None and layer != own}
    return result


def test_every_module_belongs_to_a_layer():
    unplaced = sorted(module for module in dependencies()
                      if module.split("/")[0] not in LAYERS)
    assert not unplaced, f"modules outside the layer packages: {unplaced}"


def test_imports_run_from_higher_layers_to_lower_ones():
    wrong = []
    for module, layers in dependencies().items():
        own = LAYERS[module.split("/")[0]]
        for layer in sorted(layers):
            if layer not in LAYERS or LAYERS[layer] >= own:
                wrong.append(f"{module} imports vgpumon.{layer}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_checker_sees_late_and_package_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from vgpumon import snapshot\n"
                      "def f():\n    from vgpumon.daemon.loop import Daemon\n"
                      "import vgpumon.http.server\nimport os\n")
    assert imports_of(source) == {"vgpumon", "vgpumon.snapshot", "vgpumon.daemon.loop",
                                  "vgpumon.http.server"}
