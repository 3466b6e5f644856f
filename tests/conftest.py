"""Test helpers live beside the tests (clusterspec.py, strategies.py,
engines.py, setmodel.py) and are importable through pytest's `pythonpath`
(pyproject.toml); the package is imported from its installed copy, never
from the source tree."""
