"""The package version, in a module of its own so that records can cite it without importing the library."""

__version__ = "0.1.0"
