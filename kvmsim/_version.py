"""The one source of the version (pyproject.toml reads it, and kvmsim.__version__ and kvmcompat.__version__ are it)."""

__version__ = "0.1.0"
