"""Chest CT (and tabular) cancer classification: reproducible pipeline, tracking and serving."""

__version__ = "0.1.0"
