"""The book-to-code link is checked, not prose: every module of the package names the chapter(s) that build or explain
it on one machine-readable line of its docstring, ``Defined in: notebooks/NN_name.ipynb[, book/page.md, ...]``
(as d2l's "Defined in Section X"), and every public object of the module inherits it
(``medad_edu.utils.defined_in(obj)``). Each named chapter must exist and be in ``_toc.yml``; docstrings must not
point outside the repository.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

from medad_edu.utils import defined_in

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medad_edu"
MODULES = sorted(PACKAGE.rglob("*.py"))
DEFINED_IN = re.compile(r"^Defined in: (.+)$", re.MULTILINE)
CHAPTER_REF = re.compile(r"(?:notebooks/\d\d_[\w]+\.ipynb|book/[\w]+\.md)")
OUTSIDE = re.compile(r"\.\./shared|REFERENCE\.md|\bseed 0\d\d\b")


def toc_files() -> set[str]:
    toc = (ROOT / "_toc.yml").read_text()
    files = set()
    for entry in re.findall(r"(?:file|root):\s*(\S+)", toc):
        for suffix in (".ipynb", ".md"):
            if (ROOT / f"{entry}{suffix}").exists():
                files.add(f"{entry}{suffix}")
    return files


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def chapters_named(docstring: str) -> list[str]:
    lines = DEFINED_IN.findall(docstring)
    assert len(lines) == 1, f"{len(lines)} 'Defined in:' lines (want exactly one)"
    return [c.strip() for c in lines[0].split(",")]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_module_names_its_chapters_and_they_are_in_the_book(path):
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    where = path.relative_to(ROOT).as_posix()
    assert docstring, f"{where}: no module docstring"
    book = toc_files()
    for chapter in chapters_named(docstring):
        assert chapter in book, f"{where}: 'Defined in' names {chapter!r}, not a chapter of _toc.yml"
    for ref in CHAPTER_REF.findall(docstring):  # chapters named in the prose too
        assert (ROOT / ref).exists(), f"{where}: docstring refers to {ref}, which does not exist"
    outside = OUTSIDE.search(docstring)
    assert outside is None, f"{where}: docstring points outside the repository ({outside.group(0)!r})"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_public_object_knows_its_chapter(path):
    module = importlib.import_module(module_name(path))
    own = [obj for name, obj in vars(module).items()
           if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
           and getattr(obj, "__module__", None) == module.__name__]
    for obj in own:
        chapters = defined_in(obj)
        assert chapters and all((ROOT / c).exists() for c in chapters), f"{module.__name__}.{obj.__name__}: {chapters}"


def test_defined_in_reads_the_module_line():
    from medad_edu.models.allinone import loss

    assert defined_in(loss) == chapters_named(loss.__doc__)
    public_function = next(obj for name, obj in vars(loss).items()
                           if not name.startswith("_") and inspect.isfunction(obj) and obj.__module__ == loss.__name__)
    assert defined_in(public_function) == defined_in(loss)
    with pytest.raises(ValueError, match="no 'Defined in' line"):
        defined_in(3)
