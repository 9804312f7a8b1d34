"""The notice every model carries, in its metadata, its MLflow tags, the app and the API."""

NOT_FOR_CLINICAL_USE = "Research and demonstration only. Not a medical device; not for clinical use."
