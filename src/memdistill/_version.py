"""The library's version, in a module that imports nothing (the file format and the
command line read it without importing the package root)."""

__version__ = "0.1.0"
