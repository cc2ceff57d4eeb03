"""The package's floors (CONTRIBUTING.md, "Where things live"): every import inside gen_lib points to its own
floor or one below, the import graph has no circle, and package imports sit at module level (none hidden in a
function), read from the source with `ast`. The scores (`features`, `metrics`, `intervals`) and everything
below them never reach the pipeline (`gen_lib.study`): not in the source, and not in a fresh interpreter."""

import ast
import subprocess
import sys
from pathlib import Path

import gen_lib

PACKAGE = Path(gen_lib.__file__).parent
FLOORS = {"paths": 0, "system": 0, "stats": 0,
          **dict.fromkeys(("data", "seeds", "priors", "flows", "unet", "samplers", "diffusion", "diffusion_nll", "vae",
                           "classifier", "training", "checkpoints", "quadrature", "vae_eval",
                           "sample_sets"), 1),
          **dict.fromkeys(("features", "metrics", "intervals"), 2), "study": 3, "report": 4,
          **dict.fromkeys(("run", "chunks", "measure"), 5)}
SCORES = ("features", "metrics", "intervals")


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
        if isinstance(node, ast.Import):  # import gen_lib.x.y
            out += [(alias.name.removeprefix("gen_lib."), id(node) in top) for alias in node.names
                    if alias.name.startswith("gen_lib.")]
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


def _names_of_imported_modules(path: Path) -> list[str]:
    """Every module that `path` imports anywhere (a function's body too), and every string it hands to
    `import_module` or `__import__`, as absolute names."""
    names = [("gen_lib." + n) for n, _ in imports(path)]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in ("import_module", "__import__"):
            names += [a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return names


def test_no_module_below_the_pipeline_imports_the_study_even_inside_a_function():
    below = [p for p in PACKAGE.rglob("*.py") if module_name(p) and floor(module_name(p)) < FLOORS["study"]]
    assert set(SCORES) <= {module_name(p) for p in below}
    reaching = [(module_name(p), n) for p in below for n in _names_of_imported_modules(p)
                if n == "gen_lib.study" or n.startswith("gen_lib.study.")]
    assert not reaching, reaching


def test_the_scores_load_no_module_of_the_study_in_a_fresh_interpreter():
    code = ("import gen_lib.features, gen_lib.metrics, gen_lib.intervals, sys; "
            "assert not any(m.startswith('gen_lib.study') for m in sys.modules), "
            "sorted(m for m in sys.modules if m.startswith('gen_lib'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
