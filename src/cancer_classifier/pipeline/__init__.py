"""Thin stage entry points: ``python -m cancer_classifier.pipeline.<stage>``."""
