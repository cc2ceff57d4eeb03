"""The package's floors (CONTRIBUTING.md, "Where things live"): every import inside gen_lib points to its own
floor or one below, the import graph has no circle, and package imports sit at module level (none hidden in a
function), read from the source with `ast`."""

import ast
from pathlib import Path

import gen_lib

PACKAGE = Path(gen_lib.__file__).parent
FLOORS = {"paths": 0, "system": 0, "stats": 0,
          **dict.fromkeys(("data", "seeds", "priors", "flows", "unet", "samplers", "diffusion", "diffusion_nll", "vae",
                           "classifier", "training", "checkpoints", "quadrature", "vae_eval",
                           "sampling"), 1),
          "study": 2, **dict.fromkeys(("features", "metrics", "intervals", "report"), 3), "run": 4, "chunks": 4, "measure": 4}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(name: str) -> int:
    return FLOORS[name.split(".")[0]]


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported gen_lib module, whether at module level) for every import of the package in `path`."""
    me = module_name(path).split(".") if path.name != "__init__.py" else module_name(path).split(".") + ["_"]
    tree = ast.parse(path.read_text())
    main = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    top = set(map(id, tree.body)) | {id(n) for block in main for n in ast.walk(block)}  # the script's own block
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = me[: len(me) - node.level]
        elif (node.module or "").startswith("gen_lib"):
            base, node.module = [], node.module.removeprefix("gen_lib").lstrip(".") or None
        else:
            continue
        target = base + (node.module.split(".") if node.module else [])
        for alias in node.names:  # `from . import x` names modules; `from .x import f` names x
            name = ".".join(target + [alias.name]) if node.module is None else ".".join(target)
            out.append((name if name.split(".")[0] in FLOORS else ".".join(target), id(node) in top))
    return [(n, t) for n, t in out if n]


def graph() -> dict[str, set[str]]:
    edges = {}
    for path in PACKAGE.rglob("*.py"):
        if module_name(path) in ("", "study", "report") and path.name == "__init__.py" and module_name(path) == "":
            continue
        edges[module_name(path)] = {n for n, _ in imports(path)} - {module_name(path)}
    return edges


def test_every_import_points_down_or_level():
    upward = [(m, n) for m, targets in graph().items() if m for n in targets if floor(n) > floor(m)]
    assert not upward, upward


def test_the_import_graph_has_no_circle():
    edges, state = graph(), {}

    def visit(m, path):
        state[m] = "open"
        for n in edges.get(m, ()):
            if state.get(n) == "open":
                raise AssertionError(f"import circle: {' -> '.join(path + [n])}")
            if n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in edges:
        if m not in state:
            visit(m, [m])


def test_package_imports_are_at_module_level():
    hidden = [(module_name(p), n) for p in PACKAGE.rglob("*.py") for n, top in imports(p) if not top]
    assert not hidden, hidden
