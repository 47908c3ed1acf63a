"""The package's dependency direction, checked from the source with ``ast`` (docs/ARCHITECTURE.md).

A sub-package may import only from the layers below its own; siblings in one layer do not import
each other, and no module imports another's private names.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "shufflenet_det"

# Lowest first.
LAYERS = [
    {"utils"}, {"config"}, {"modeling"}, {"weights"}, {"analysis"}, {"data"}, {"engine"}, {"evaluation"},
    {"detection", "classification"}, {"deploy"}, {"integrations"},
]
LAYER = {name: index for index, layer in enumerate(LAYERS) for name in layer}

def imports():
    """(file relative to the package, imported module, imported names) for every package-internal import."""
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        parts = ["shufflenet_det", *relative.with_suffix("").parts]
        package = parts if parts[-1] == "__init__" else parts[:-1]
        package = [p for p in package if p != "__init__"]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                module, names = next((a.name for a in node.names if a.name.startswith("shufflenet_det")), ""), []
            else:
                continue
            if module.startswith("shufflenet_det"):
                yield relative.as_posix(), module, names


def subpackage_edges():
    edges = set()
    for relative, module, _ in imports():
        source, target = relative.split("/")[0], (module.split(".") + [""])[1]
        if source in LAYER and target in LAYER and source != target:
            edges.add((source, target))
    return edges


def test_every_subpackage_has_a_layer():
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert subpackages == set(LAYER)


def test_imports_point_down_the_layers():
    upward = {(source, target) for source, target in subpackage_edges() if LAYER[target] >= LAYER[source]}
    assert not upward


def test_no_private_names_imported_across_modules():
    private = {
        (relative, name)
        for relative, module, names in imports()
        for name in names
        if name.startswith("_") and not name.startswith("__")
    }
    assert not private

