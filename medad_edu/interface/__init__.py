"""Interface: the command line, plots and interactive widgets.

Defined in: book/setup.md
"""
