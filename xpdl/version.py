"""The package version, apart from the package root (which imports the model)."""

__version__ = "0.1.0"
