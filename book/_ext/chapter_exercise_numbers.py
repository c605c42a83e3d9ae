"""Number each chapter's exercises from 1 under the chapter's own number: "Exercise 14.2".

Sphinx counts numbered directives across the whole book (chapter 2's exercises would be 4-6), and a numbered
table of contents would number the chapters 1, 2, 3, ... while the prose and the files say 01, 02, 03, 10, 11, ...
This extension keeps the numbers the book already uses: the chapter number is the notebook's file prefix
(``notebooks/14_allinone_full`` -> 14). Exercises outside a numbered notebook keep Sphinx's count.
"""
from __future__ import annotations

import re

CHAPTER_FILE = re.compile(r"(?:^|/)(\d+)_[^/]*$")


def renumber_exercises(app, env):
    for docname, numbers in env.toc_fignumbers.items():
        match = CHAPTER_FILE.search(docname)
        exercises = numbers.get("exercise")
        if not match or not exercises:
            continue
        chapter = int(match.group(1))
        in_order = sorted(exercises, key=lambda node_id: exercises[node_id])
        numbers["exercise"] = {node_id: (chapter, i) for i, node_id in enumerate(in_order, start=1)}
    return []


def setup(app):
    # after Sphinx's toctree collector (priority 500) has assigned its book-wide numbers
    app.connect("env-get-updated", renumber_exercises, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
