"""Benchmarks and studies: run each as a module from the project folder, e.g. `python -m benchmarks.benchmark`."""
