"""The package version, in a leaf module that library rooms import without touching the package face."""

__version__ = "0.1.0"
