"""Research experiments (not part of the installed package); run them from the repository root
as `python -m experiments.<name>`. See experiments/README.md."""
