"""The committed notebooks only call the library: no code line over 120 characters, nothing looked up by a
profile's name (a new profile must work without editing a notebook), and every cell that writes report numbers
or tables is one call under a markdown heading that names what it writes."""

import ast
from pathlib import Path

import nbformat
import pytest

from gen_lib.study import config

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _writers() -> set[str]:
    """The library functions that write report numbers or tables: report's own and those of `report.numbers`."""
    import inspect

    from gen_lib.report import numbers

    own = {"write_macros", "dataframe_table", "write_table"}
    functions = [(name, f) for name, f in vars(numbers).items()
                 if inspect.isfunction(f) and f.__module__ == numbers.__name__]
    return own | {name for name, f in functions if any(f"{w}(" in inspect.getsource(f) for w in own)}


def _writes(tree: ast.AST, writers: set[str]) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in writers
               for n in ast.walk(tree))


def _code(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def _tree(source: str) -> ast.Module:
    return ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_code_line_is_over_120_characters(path):
    long = [(len(line), line[:60]) for cell in _code(path) for line in cell.source.splitlines() if len(line) > 120]
    assert not long, long


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_nothing_is_keyed_by_a_profile_name(path):
    profiles = set(config.PROFILES)
    for cell in _code(path):
        for node in ast.walk(_tree(cell.source)):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                assert not keys & profiles, f"{path.stem}: a dict keyed by profile names: {ast.unparse(node)[:80]}"
            if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in profiles
                                                     for c in node.comparators):
                assert False, f"{path.stem}: a comparison with a profile name: {ast.unparse(node)[:80]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_report_plumbing_is_one_call_under_a_heading_that_names_it(path):
    cells, writers = nbformat.read(path, as_version=4).cells, _writers()
    assert {"priors", "flow", "ddpm", "quality", "priors_table1", "quality_table3"} <= writers
    for i, cell in enumerate(cells):
        if cell.cell_type != "code" or not _writes(_tree(cell.source), writers):
            continue
        statements = _tree(cell.source).body
        body = statements[0].body if len(statements) == 1 and isinstance(statements[0], ast.If) else statements
        assert len(body) == 1, f"{path.stem} cell {i}: report plumbing in {len(body)} statements:\n{cell.source}"
        heading = next(c for c in reversed(cells[:i]) if c.cell_type == "markdown").source.splitlines()[0]
        assert heading.startswith("#") and "writes `" in heading, f"{path.stem} cell {i}: heading {heading!r}"


def test_the_test_finds_the_line_and_the_dict_it_forbids():
    source = 'scope = {"paper": 1, "default": 2, "smoke": 3}[profile]\n'
    assert any(isinstance(n, ast.Dict) and {k.value for k in n.keys} & set(config.PROFILES)
               for n in ast.walk(_tree(source)))
