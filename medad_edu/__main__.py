"""``python -m medad_edu``: the same command line as ``medad-edu`` (also what ``torchrun -m medad_edu`` runs).

Defined in: book/setup.md
"""
from .interface.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
