"""The package's version, declared once: pyproject.toml reads it, the run key records it."""

__version__ = "0.2.0"
