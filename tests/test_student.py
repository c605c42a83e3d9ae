"""The student edition (`medad-edu book student`): solutions removed, revealing outputs cleared, chapters still run."""
import json
from pathlib import Path

import pytest

from medad_edu.interface import cli
from medad_edu.interface.student import (EXERCISE, solution_blocks, solution_texts, student_notebook,
                                         write_student_edition)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("*.ipynb"))


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    report = write_student_edition(out, NOTEBOOKS)
    # The student copies share the chapters' trained models (notebooks/_runs): a chapter that finds its checkpoint
    # loads it, else trains it there once for both the student copy and nbval's run of the chapter itself.
    (NOTEBOOKS / "_runs").mkdir(exist_ok=True)
    (out / "notebooks" / "_runs").symlink_to(NOTEBOOKS / "_runs", target_is_directory=True)
    return out, report


def _load(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _src(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _first_exercise(nb):
    return next((i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown" and EXERCISE.match(_src(c))),
                None)


def test_every_notebook_is_written_without_solutions(edition):
    out, report = edition
    assert report.notebooks == [p.name for p in SOURCES]
    total = 0
    for path in SOURCES:
        source, student = _load(path), _load(out / "notebooks" / path.name)
        texts = solution_texts(source)
        total += len(texts)
        student_text = json.dumps(student, ensure_ascii=False)
        plain = "\n".join(_src(c) for c in student["cells"])
        assert "{solution-start}" not in plain and "{solution-end}" not in plain, path.name
        in_blocks = {id(c) for b in solution_blocks(source) for c in b}
        rest = json.dumps([c for c in source["cells"] if id(c) not in in_blocks], ensure_ascii=False)
        for block in solution_blocks(source):
            for cell in block[1:-1]:  # no solution cell survives whole ...
                assert json.dumps(_src(cell), ensure_ascii=False)[1:-1] not in student_text, path.name
        for text in texts:  # ... nor any line of a solution that the chapter itself does not contain
            for line in text.splitlines():
                quoted = json.dumps(line.strip(), ensure_ascii=False)[1:-1]
                if len(line.strip()) >= 25 and quoted not in rest:
                    assert quoted not in student_text, (path.name, line)
        first = _first_exercise(student)
        if first is not None:  # nothing after the first exercise keeps an output
            assert all(not c.get("outputs") for c in student["cells"][first:] if c["cell_type"] == "code")
            assert len(student["cells"]) == len(source["cells"]) - sum(len(b) for b in solution_blocks(source))
    assert total >= 3 * 15 and report.solutions_removed == total
    assert "book/results/mtl_ablations/results.json" in report.data_files or \
        any(f.startswith("book/results") for f in report.data_files)


def test_student_notebook_rules():
    md = lambda s: {"cell_type": "markdown", "metadata": {}, "source": s}
    code = lambda s, out: {"cell_type": "code", "metadata": {}, "execution_count": 1, "source": s,
                           "outputs": [{"output_type": "stream", "name": "stdout", "text": out}]}
    nb = {"cells": [md("# title"), code("x = 1", "kept output"),
                    md("```{exercise} One\n:label: ex-a\n\nDo it.\n```"),
                    md("```{solution-start} ex-a\n:class: dropdown\n```"), code("print('the secret answer')", "42"),
                    md("```{solution-end}\n```"), code("y = 2", "an output after the exercise")],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    student, removed, cleared = student_notebook(nb)
    assert removed == 1 and cleared == 1
    assert [_src(c) for c in student["cells"]][-1] == "y = 2" and student["cells"][-1]["outputs"] == []
    assert student["cells"][1]["outputs"][0]["text"] == "kept output"
    assert len(nb["cells"]) == 7  # the source is left as it was
    with pytest.raises(ValueError, match="without its solution-end"):
        student_notebook({"cells": nb["cells"][:5]})
    with pytest.raises(ValueError, match="without its solution-start"):
        student_notebook({"cells": nb["cells"][5:]})


def test_cli_book_student(tmp_path, capsys):
    out = tmp_path / "book"
    assert cli.main(["book", "student", "--out", str(out)]) == 0
    assert "notebooks" in capsys.readouterr().out and (out / "notebooks" / "02_metrics.ipynb").is_file()
    assert cli.main(["book", "student", "--out", str(out)]) == cli.EXIT_BAD_INPUT  # not empty, no --force
    err = capsys.readouterr().err.strip()
    assert err.startswith("medad-edu book: error:") and "--force" in err and "\n" not in err
    assert cli.main(["book", "student", "--out", str(out), "--force"]) == 0
    (tmp_path / "file").write_text("x")
    assert cli.main(["book", "student", "--out", str(tmp_path / "file")]) == cli.EXIT_BAD_INPUT
    assert "not a folder" in capsys.readouterr().err


def _run_until_first_exercise(path: Path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    first = _first_exercise(nb)
    nb.cells = nb.cells[:first] if first is not None else nb.cells
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


@pytest.mark.parametrize("name", [pytest.param("02_metrics.ipynb", marks=pytest.mark.slow), "23_mtl_ablations.ipynb"])
def test_student_chapter_runs_until_its_first_exercise(edition, name):
    out, _ = edition
    nb = _run_until_first_exercise(out / "notebooks" / name)
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
@pytest.mark.parametrize("name", [p.name for p in SOURCES])
def test_every_student_chapter_runs_until_its_first_exercise(edition, name):
    out, _ = edition
    _run_until_first_exercise(out / "notebooks" / name)
