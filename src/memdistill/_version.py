"""The package version (one place; the file format reads it without importing the package)."""

__version__ = "0.1.0"
