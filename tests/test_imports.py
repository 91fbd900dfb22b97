"""Which package may import which: the layering of clusterplan, read from the source with `ast`.

    hwmodels    imports nothing of ours
    simulator   imports hwmodels
    planner     imports simulator, hwmodels
    validation  imports simulator, hwmodels
    ui          imports anything; nothing imports ui (tests may)

Every import counts: at the top of a module or inside a function (a lazy import), `import a.b`,
`from a import b`, relative imports (resolved against the module's package), and
`importlib.import_module("a.b")` / `__import__("a.b")` with a literal name.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "hwmodels": set(),
    "simulator": {"hwmodels"},
    "planner": {"simulator", "hwmodels"},
    "validation": {"simulator", "hwmodels"},
    "ui": {"hwmodels", "simulator", "planner", "validation"},
}
PACKAGES = tuple(ALLOWED)


def imported_modules(path: str, source: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, the text of `path` (a file path
    relative to the repository root, e.g. "planner/search.py")."""
    package = list(Path(path).parts[:-1])  # of a/b/c.py and of a/b/__init__.py: a.b
    found = []
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from ..pkg import y
                base = package[: len(package) - (node.level - 1)]
                if node.module:
                    found.append((node.lineno, ".".join(base + [node.module])))
                else:
                    found += [(node.lineno, ".".join(base + [a.name])) for a in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def violations(path: str, source: str) -> list[str]:
    """The imports of `source` (the text of `path`) that break the layering, one line each."""
    owner = Path(path).parts[0]
    if owner not in ALLOWED:
        return []
    out = []
    for line, module in imported_modules(path, source):
        top = module.split(".")[0]
        if top in ALLOWED and top != owner and top not in ALLOWED[owner]:
            rule = "nothing imports ui" if top == "ui" else \
                f"{owner} may import {', '.join(sorted(ALLOWED[owner])) or 'nothing of ours'}"
            out.append(f"{path}:{line}: imports {module} ({rule})")
    return out


def _modules():
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            yield p.relative_to(ROOT).as_posix(), p.read_text(encoding="utf-8")


def test_every_package_imports_only_what_it_may():
    modules = list(_modules())
    assert len(modules) > 30 and {m.split("/")[0] for m, _ in modules} == set(PACKAGES)
    bad = [v for path, src in modules for v in violations(path, src)]
    assert not bad, "import rules broken:\n" + "\n".join(bad)


def test_the_scan_sees_lazy_imports():
    """The real tree has imports inside functions; the scan must read them (not just the top)."""
    lazy = 0
    for path, src in _modules():
        for fn in ast.walk(ast.parse(src)):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lazy += sum(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(fn))
    assert lazy > 10


@pytest.mark.parametrize("path, source", [
    ("planner/x.py", "from ui.cli import main"),  # nothing imports ui
    ("planner/x.py", "def f():\n    from validation.published import published_report\n"),  # lazy
    ("validation/x.py", "import planner.search"),
    ("simulator/x.py", "import planner"),
    ("hwmodels/x.py", "from simulator.models import load_model"),
    ("hwmodels/sub/x.py", "from ...simulator import models"),  # relative, out of the package
    ("simulator/x.py", "from .. import ui"),
    ("planner/x.py", "import importlib\nmod = importlib.import_module('validation.harness')"),
    ("planner/x.py", "mod = __import__('ui')"),
])
def test_the_checker_catches_a_wrong_import(path, source):
    assert len(violations(path, source)) == 1, violations(path, source)


@pytest.mark.parametrize("path, source", [
    ("planner/x.py", "from simulator.training import TrainingJob\nimport hwmodels.clusters\nimport numpy"),
    ("validation/x.py", "def f():\n    from simulator.models import load_model\n"),
    ("hwmodels/x.py", "from hwmodels.errors import InputError\nfrom . import devices\n"),
    ("ui/cli/x.py", "from planner.search import search\nfrom validation import published\nfrom . import flags"),
    ("simulator/serving/x.py", "from ..models import load_model\nfrom hwmodels import clusters"),
])
def test_the_checker_allows_the_layering(path, source):
    assert violations(path, source) == []
