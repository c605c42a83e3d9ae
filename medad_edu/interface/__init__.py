"""Interface: the command line, plots and interactive widgets."""
