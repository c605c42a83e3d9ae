"""The package's layers import only downward: every import, also those inside functions, is checked.

Layers, lowest first (a module may import its own layer and the layers listed as allowed below it):

- ``base``: ``medad_edu/__init__.py`` and the top-level modules ``utils``, ``_compat``, ``ranking`` and
  ``checkpoint_io`` (plain helpers, the AUROC primitive, the checkpoint error type and safe read);
- ``data``: ``medad_edu.data`` (synthetic and real images, tasks, batches);
- ``models``: ``medad_edu.models`` (the detectors and their inference contract);
- ``training``: ``medad_edu.training`` (loop, checkpoints, thresholds) and, beside it, ``reasoning``:
  ``medad_edu.reasoning`` may import ``training``, but nothing below ``interface`` imports ``reasoning``;
- ``evaluation``: ``medad_edu.evaluation`` (metrics, bench);
- ``interface``: ``medad_edu.interface`` and ``medad_edu/__main__.py`` (command line, plots, explorer).

A module that no entry of ``LAYER_OF`` maps is a failure, so a new top-level module or package cannot slip
past the check: add it to the map (and to the list above) when you create it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "medad_edu"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

# Module (exact name) or package (the name and everything below it) -> layer. The longest match wins.
LAYER_OF: dict[str, str] = {
    "medad_edu": "base",  # the package __init__ only: an unlisted top-level module is not covered by it
    "medad_edu.utils": "base",
    "medad_edu._compat": "base",
    "medad_edu.ranking": "base",
    "medad_edu.checkpoint_io": "base",
    "medad_edu.data": "data",
    "medad_edu.models": "models",
    "medad_edu.training": "training",
    "medad_edu.reasoning": "reasoning",
    "medad_edu.evaluation": "evaluation",
    "medad_edu.interface": "interface",
    "medad_edu.__main__": "interface",
}
# Entries of LAYER_OF that cover only the module itself, not the names below it.
EXACT_ONLY = {"medad_edu"}

_BELOW_TRAINING = {"base", "data", "models", "training"}
ALLOWED: dict[str, set[str]] = {
    "base": {"base"},
    "data": {"base", "data"},
    "models": {"base", "data", "models"},
    "training": set(_BELOW_TRAINING),
    "reasoning": _BELOW_TRAINING | {"reasoning"},
    "evaluation": _BELOW_TRAINING | {"evaluation"},
    "interface": _BELOW_TRAINING | {"reasoning", "evaluation", "interface"},
}

# Known violations still in the tree, each with the change that removes it. Keep this list empty otherwise.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()

_IMPORT_FUNCTIONS = {"import_module", "__import__", "find_spec"}


def module_name(path: Path, root: Path) -> str:
    """``root/medad_edu/a/b.py`` -> ``medad_edu.a.b``; ``.../a/__init__.py`` -> ``medad_edu.a``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYER_OF and (n == len(parts) or prefix not in EXACT_ONLY):
            return LAYER_OF[prefix]
    return None


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> list[tuple[str, int]]:
    """Every ``(imported module of PACKAGE, line)`` in ``source``: ``import``/``from`` statements at any depth
    (relative ones resolved), and ``importlib.import_module``/``__import__``/``find_spec`` calls with a string
    literal. ``from X import name`` counts as ``X.name`` where that is a module of ``known``, else as ``X``."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((candidate if candidate in known else base, node.lineno))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0]
            if name in _IMPORT_FUNCTIONS and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((arg.value, node.lineno))
    return [(name, line) for name, line in found if name == PACKAGE or name.startswith(PACKAGE + ".")]


def find_violations(root: Path) -> list[tuple[str, str, str]]:
    """``(importer, imported or "", one-line message)`` per upward import or unmapped module below ``root``."""
    files = sorted((root / PACKAGE).rglob("*.py"))
    modules = {module_name(f, root): f for f in files}
    found = []
    for module, path in modules.items():
        where = path.relative_to(root).as_posix()
        importer_layer = layer_of(module)
        if importer_layer is None:
            found.append((module, "", f"{where}: module {module} is in no layer; add it to LAYER_OF"))
            continue
        for imported, line in imports_of(path.read_text(encoding="utf-8"), module, path.name == "__init__.py",
                                         set(modules)):
            imported_layer = layer_of(imported)
            if imported_layer is None:
                found.append((module, imported, f"{where}:{line}: {module} imports {imported}, which is in no layer"))
            elif imported_layer not in ALLOWED[importer_layer]:
                found.append((module, imported, f"{where}:{line}: {module} ({importer_layer}) imports {imported} "
                                                f"({imported_layer}); {importer_layer} may import only "
                                                f"{', '.join(sorted(ALLOWED[importer_layer]))}"))
    return found


def layer_violations(root: Path, known_violations: set[tuple[str, str]] = frozenset()) -> list[str]:
    """One line per upward import or unmapped module below ``root``, except the pairs of ``known_violations``."""
    return [message for importer, imported, message in find_violations(root)
            if (importer, imported) not in known_violations]


def test_package_imports_only_downward():
    problems = layer_violations(PACKAGE_DIR.parent, KNOWN_VIOLATIONS)
    assert not problems, "\n" + "\n".join(problems)


def test_known_violations_still_exist():
    """An allow-list entry whose import is gone must be deleted, so the list cannot hide a new import later."""
    stale = KNOWN_VIOLATIONS - {(importer, imported) for importer, imported, _ in find_violations(PACKAGE_DIR.parent)}
    assert not stale, f"known violations that are gone, delete them from KNOWN_VIOLATIONS: {sorted(stale)}"


def _write(root: Path, relative: str, text: str) -> None:
    path = root / PACKAGE / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def clean_package(tmp_path: Path) -> Path:
    """A small package with the real layout and only downward imports."""
    _write(tmp_path, "__init__.py", "from .utils import helper\n")
    _write(tmp_path, "utils.py", "def helper():\n    return 1\n")
    _write(tmp_path, "data/__init__.py", "from ..utils import helper\n")
    _write(tmp_path, "models/__init__.py", "")
    _write(tmp_path, "models/base.py", "from .. import data\nfrom ..data import helper\n")
    _write(tmp_path, "training/__init__.py", "")
    _write(tmp_path, "training/loop.py", "def run():\n    from ..models import base\n    return base\n")
    _write(tmp_path, "evaluation/__init__.py", "from ..training.loop import run\n")
    _write(tmp_path, "interface/__init__.py", "import medad_edu.evaluation\n")
    return tmp_path


def test_clean_package_passes(clean_package: Path):
    assert layer_violations(clean_package) == []


@pytest.mark.parametrize("relative, source, imported, line", [
    ("models/thing.py", "from ..training.loop import run\n", "medad_edu.training.loop", 1),  # relative, top level
    ("models/deep/thing.py", "def build():\n    from ...training import loop\n    return loop\n",
     "medad_edu.training.loop", 2),  # inside a function, two levels up
    ("models/thing.py", "class M:\n    def load(self):\n        import medad_edu.evaluation\n",
     "medad_edu.evaluation", 3),  # inside a method, absolute
    ("models/thing.py", "import importlib\n\n\ndef get():\n    return importlib.import_module('medad_edu.interface')\n",
     "medad_edu.interface", 5),  # by name
])
def test_planted_upward_import_is_reported(clean_package: Path, relative: str, source: str, imported: str, line: int):
    _write(clean_package, "models/deep/__init__.py", "")
    _write(clean_package, relative, source)
    problems = layer_violations(clean_package)
    assert len(problems) == 1, problems
    module = "medad_edu." + relative[:-3].replace("/", ".")
    assert problems[0].startswith(f"{PACKAGE}/{relative}:{line}: {module} (models) imports {imported} ("), problems


def test_known_violation_is_allowed_only_for_its_pair(clean_package: Path):
    _write(clean_package, "evaluation/bench.py", "def plot():\n    from ..interface import plots\n")
    _write(clean_package, "interface/plots.py", "")
    allowed = {("medad_edu.evaluation.bench", "medad_edu.interface.plots")}
    assert layer_violations(clean_package, allowed) == []
    _write(clean_package, "evaluation/other.py", "from ..interface import plots\n")
    assert [p.split(":")[0] for p in layer_violations(clean_package, allowed)] == ["medad_edu/evaluation/other.py"]


def test_reasoning_is_imported_by_the_interface_only(clean_package: Path):
    _write(clean_package, "reasoning/__init__.py", "from ..training.loop import run\n")
    assert layer_violations(clean_package) == []
    _write(clean_package, "evaluation/vqa.py", "from ..reasoning import run\n")
    problems = layer_violations(clean_package)
    assert len(problems) == 1 and "(evaluation) imports medad_edu.reasoning (reasoning)" in problems[0], problems


@pytest.mark.parametrize("relative", ["newthing.py", "newlayer/__init__.py"])
def test_unmapped_module_is_reported(clean_package: Path, relative: str):
    _write(clean_package, relative, "")
    problems = layer_violations(clean_package)
    assert len(problems) == 1 and "is in no layer" in problems[0], problems
