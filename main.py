"""Run every pipeline stage in order, without DVC (``dvc repro`` runs the same stages)."""

from cancer_classifier.cli import run_pipeline

if __name__ == "__main__":
    run_pipeline()
