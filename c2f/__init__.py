"""The app layer: the `c2f` command line and the flag machinery. It may import every package;
no package imports it (docs/ARCHITECTURE.md, tests/test_imports.py)."""
