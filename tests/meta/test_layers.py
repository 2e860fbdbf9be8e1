"""Lower layers never import higher ones: every ``ssdxl`` import in the source (lazy ones in function
bodies too) goes to a module of the same or a lower layer. The layers, lowest first, are data here;
a module takes the layer of its longest listed prefix."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
LAYERS: tuple[tuple[str, ...], ...] = (
    ("ssdxl.errors", "ssdxl.paths"),
    # the request and the device policy are plain data every layer shares
    ("ssdxl.sampling.request", "ssdxl.sampling.limits", "ssdxl.sampling.precision", "ssdxl.sampling.schedulers"),
    ("ssdxl.models", "ssdxl.data", "ssdxl.upscale"),
    ("ssdxl.output", "ssdxl.conditioning", "ssdxl.adapters", "ssdxl.control", "ssdxl.evaluation"),
    # how an engine runs its UNets (backends, DeepCache, CPU tuning): below the engine that picks them
    ("ssdxl.speed.runtime", "ssdxl.speed.openvino_backend", "ssdxl.speed.deepcache", "ssdxl.speed.tuning",
     "ssdxl.speed.machine", "ssdxl.speed.timing", "ssdxl.speed.threads"),
    ("ssdxl.sampling", "ssdxl"),  # ``ssdxl`` itself: the Python API facade (Engine, GenerationRequest)
    ("ssdxl.speed", "ssdxl.training"),
    ("ssdxl.finetune",),
    ("ssdxl.distill",),
    ("ssdxl.server", "ssdxl.compare"),  # whole applications over the engine; compare also over evaluation
    ("ssdxl.cli",),
)  # fmt: skip


def layer(module: str) -> int:
    best, found = -1, None
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), level
    assert found is not None, f"{module} is in no layer: add it to LAYERS"
    return found


def is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> set[str]:
    """The ssdxl modules ``path`` imports; ``from ssdxl.speed import tuning`` imports ``ssdxl.speed.tuning``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ssdxl":
            names = [f"{node.module}.{a.name}" for a in node.names]
            found |= {n for n in names if is_module(n)} or {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "ssdxl"}
    return found


def test_no_module_imports_a_higher_layer():
    upward = []
    for path in sorted((SRC / "ssdxl").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for target in imports(path):
            if layer(target) > layer(module):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)
