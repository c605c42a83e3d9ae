"""``medad-edu book student``: the student edition of the book's notebooks, without the worked solutions.

::

    medad-edu book student --out DIR [--notebooks DIR] [--force]

Every chapter notebook ends with exercises (``sphinx-exercise``): a markdown cell holding an ``{exercise}``
directive, then its worked solution as *gated* directives, a markdown cell starting with ``{solution-start}``, the
solution's code and markdown cells, and a markdown cell starting with ``{solution-end}``. The student edition is a
copy of every notebook in which

* every solution is removed, from its ``solution-start`` cell through its ``solution-end`` cell inclusive;
* the outputs of every code cell from the first exercise on are cleared (they could reveal an answer), and so
  are those of any cell whose output quotes a removed solution; the cells before the first exercise keep their
  outputs, so the chapter reads as in the book;
* the files the notebooks read through relative paths outside ``_runs/`` (e.g. ``../book/results/...``) are
  copied with them, at the same place relative to the notebooks, so each chapter runs from the copy.

Layout of ``DIR``: ``DIR/notebooks/*.ipynb`` plus the copied files (``DIR/book/results/...``). Checkpoints in
``notebooks/_runs/`` are not copied: the chapters train or load them themselves.

Python::

    from medad_edu.interface.student import write_student_edition
    report = write_student_edition("student_book")
    report.notebooks, report.solutions_removed

Defined in: book/setup.md
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

SOLUTION_START = re.compile(r"^\s*(`{3,}|:{3,})\s*\{solution-start\}")
SOLUTION_END = re.compile(r"^\s*(`{3,}|:{3,})\s*\{solution-end\}")
EXERCISE = re.compile(r"^\s*(`{3,}|:{3,})\s*\{exercise(-start)?\}")
# a copied data file or folder may hold at most this much (the student edition is notebooks, not a data set)
MAX_DATA_BYTES = 64 * 1024 * 1024


@dataclass
class StudentReport:
    out_dir: Path
    notebooks: list[str] = field(default_factory=list)
    solutions_removed: int = 0
    outputs_cleared: int = 0
    data_files: list[str] = field(default_factory=list)


def default_notebooks_dir() -> Path:
    """``notebooks/`` of the repository this package was installed from (editable or source checkout)."""
    return Path(__file__).resolve().parents[2] / "notebooks"


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def solution_blocks(nb: dict) -> list[list[dict]]:
    """The cells of each solution, ``solution-start`` through ``solution-end`` inclusive, in order.

    Raises ValueError for a ``solution-start`` without its ``solution-end`` (or the reverse), or a nested one."""
    blocks, current = [], None
    for i, cell in enumerate(nb.get("cells", [])):
        text = _source(cell) if cell.get("cell_type") == "markdown" else ""
        if SOLUTION_START.match(text):
            if current is not None:
                raise ValueError(f"cell {i}: a solution-start inside another solution")
            current = [cell]
            if "{solution-end}" in text:
                raise ValueError(f"cell {i}: solution-start and solution-end must be separate cells")
            continue
        if current is not None:
            current.append(cell)
            if SOLUTION_END.match(text):
                blocks.append(current)
                current = None
        elif SOLUTION_END.match(text):
            raise ValueError(f"cell {i}: a solution-end without its solution-start")
    if current is not None:
        raise ValueError("a solution-start without its solution-end")
    return blocks


def solution_texts(nb: dict) -> list[str]:
    """The text of every solution of a notebook (its cells' sources joined), for checks."""
    return ["\n".join(_source(c) for c in block[1:-1]) for block in solution_blocks(nb)]


def _output_text(cell: dict) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if "text" in out:
            parts.append(_source({"source": out["text"]}))
        for value in out.get("data", {}).values():
            parts.append(_source({"source": value}) if isinstance(value, (str, list)) else json.dumps(value))
    return "\n".join(parts)


def student_notebook(nb: dict) -> tuple[dict, int, int]:
    """A copy of ``nb`` without solutions and with the revealing outputs cleared.

    Returns (notebook, number of solutions removed, number of code cells whose outputs were cleared)."""
    blocks = solution_blocks(nb)
    in_solution = {id(c) for block in blocks for c in block}
    solution_lines = {line.strip() for block in blocks for c in block[1:-1] for line in _source(c).splitlines()
                      if len(line.strip()) >= 20}
    cells, cleared, after_exercise = [], 0, False
    for cell in nb.get("cells", []):
        if id(cell) in in_solution:
            continue
        cell = json.loads(json.dumps(cell))  # a deep copy: the source notebook is left as it was
        if cell.get("cell_type") == "markdown" and EXERCISE.match(_source(cell)):
            after_exercise = True
        if cell.get("cell_type") == "code":
            revealing = after_exercise or any(line in _output_text(cell) for line in solution_lines)
            if revealing and (cell.get("outputs") or cell.get("execution_count") is not None):
                cleared += 1
            if revealing:
                cell["outputs"], cell["execution_count"] = [], None
        cells.append(cell)
    out = dict(nb)
    out["cells"] = cells
    return out, len(blocks), cleared


def _string_literals(code: str) -> list[str]:
    """String constants of a code cell (cells that are not valid Python, e.g. IPython magics, are scanned by regex)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return re.findall(r"[\"']([^\"'\n]+)[\"']", code)
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def data_dependencies(nb: dict, notebooks_dir: Path) -> list[Path]:
    """Files and folders outside ``notebooks/`` that the notebook names through a relative path (resolved against
    ``notebooks_dir``), such as ``../book/results/x.json``. Paths under ``notebooks/`` itself (``_runs/``,
    checkpoints the chapters write) are not dependencies: the chapters make them."""
    notebooks_dir = notebooks_dir.resolve()
    root = notebooks_dir.parent
    found = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        for text in _string_literals(_source(cell)):
            if "/" not in text or text.startswith(("/", "~")) or "\n" in text or len(text) > 300:
                continue
            try:
                target = (notebooks_dir / text).resolve()
            except (OSError, RuntimeError):
                continue
            if target.exists() and target.is_relative_to(root) and not target.is_relative_to(notebooks_dir):
                found.append(target)
    return sorted(set(found))


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_student_edition(out_dir, notebooks_dir=None, force: bool = False) -> StudentReport:
    """Write the student edition of every ``*.ipynb`` in ``notebooks_dir`` to ``out_dir/notebooks``.

    ``out_dir`` must not exist, or be an empty folder; with ``force=True`` an existing folder is written into
    (files of the same name are replaced). Raises ValueError with a one-line message otherwise."""
    out_dir = Path(out_dir)
    src_dir = Path(notebooks_dir) if notebooks_dir is not None else default_notebooks_dir()
    if not src_dir.is_dir():
        raise ValueError(f"{src_dir}: no notebooks folder there (pass --notebooks DIR)")
    sources = sorted(src_dir.glob("*.ipynb"))
    if not sources:
        raise ValueError(f"{src_dir}: no notebooks (*.ipynb) in this folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ValueError(f"{out_dir}: folder exists and is not empty (use --force to write into it)")
    if out_dir.resolve() == src_dir.resolve().parent or out_dir.resolve() == src_dir.resolve():
        raise ValueError(f"{out_dir}: would overwrite the source notebooks")

    notebooks, deps = [], set()
    for path in sources:  # read and check everything before writing anything
        try:
            nb = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a readable notebook ({err})") from None
        try:
            student, n_removed, n_cleared = student_notebook(nb)
        except ValueError as err:
            raise ValueError(f"{path.name}: {err}") from None
        notebooks.append((path.name, student, n_removed, n_cleared))
        deps.update(data_dependencies(nb, src_dir))
    root = src_dir.resolve().parent
    for dep in sorted(deps):
        if _size(dep) > MAX_DATA_BYTES:
            raise ValueError(f"{dep}: a notebook reads it, but it holds more than {MAX_DATA_BYTES >> 20} MiB")

    report = StudentReport(out_dir)
    (out_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    for name, student, n_removed, n_cleared in notebooks:
        (out_dir / "notebooks" / name).write_text(json.dumps(student, indent=1, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
        report.notebooks.append(name)
        report.solutions_removed += n_removed
        report.outputs_cleared += n_cleared
    for dep in sorted(deps):
        rel = dep.relative_to(root)
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if dep.is_dir():
            shutil.copytree(dep, target, dirs_exist_ok=True)
        else:
            shutil.copy2(dep, target)
        report.data_files.append(rel.as_posix())
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``book`` command and its ``student`` action (called by :func:`medad_edu.interface.cli.build_parser`)."""
    actions = p.add_subparsers(dest="book_command", metavar="ACTION")
    st = actions.add_parser("student", help="write the notebooks without the exercises' solutions")
    st.add_argument("--out", required=True, type=Path, help="output folder; must not exist or be empty")
    st.add_argument("--notebooks", type=Path, default=None,
                    help="source notebooks folder (default: notebooks/ of this checkout)")
    st.add_argument("--force", action="store_true", help="write into an existing non-empty folder")
    p.set_defaults(book_parser=p)


def run(args) -> int:
    if getattr(args, "book_command", None) is None:
        args.book_parser.print_help()
        return 2
    report = write_student_edition(args.out, args.notebooks, force=args.force)
    print(f"wrote {len(report.notebooks)} notebooks to {report.out_dir / 'notebooks'}: "
          f"{report.solutions_removed} solutions removed, outputs of {report.outputs_cleared} cells cleared"
          + (f"; copied {', '.join(report.data_files)}" if report.data_files else ""))
    return 0
