"""The package version, in one place (read by provenance records and the package itself)."""
__version__ = "0.1.0"
