"""The web app and JSON API that serve the classifier: ``create_app()`` builds it."""

from cancer_classifier.serving.app import create_app

__all__ = ["create_app"]
