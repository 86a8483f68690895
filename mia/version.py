"""mia's version (one place: the package, pyproject.toml and every provenance record read it)."""

__version__ = "0.1.0"
