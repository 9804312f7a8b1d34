"""The registered chest-CT model as MLflow's own scoring server runs it (``mlflow models serve``).

MLflow loads this file as the model's code ("models from code": no pickled Python object), with
the project's package from the model's ``code`` folder and the serving files (the same ones the
app reads) from its artifacts. A request is what the app accepts, as base64:
``{"dataframe_records": [{"image": "<base64 of a PNG, JPEG or DICOM file>"}]}``; each record's
answer is the app's: label, probabilities by class name and the out-of-distribution check.
Decoding uses the app's default DICOM window and decode budget; serving is float32.
"""

import base64
import binascii
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

ANSWER_KEYS = ("label", "probabilities", "in_distribution", "ood_score", "precision")


class ChestCTModel(PythonModel):
    def load_context(self, context) -> None:
        from cancer_classifier.serving.predictor import Identity, ModelCard, Predictor

        files = Path(context.artifacts["serving"])
        identity = Identity("registered model", "", None, "mlflow")
        self.predictor = Predictor.from_files(files, ModelCard(files / "model_card.json"), identity, "float32")

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[dict]:
        from cancer_classifier.serving.inputs import DEFAULT_WINDOW, DecodeBudget, to_rgb

        budget = DecodeBudget()
        images = [to_rgb(decoded(value), DEFAULT_WINDOW, budget)[0] for value in model_input["image"]]
        return [{key: answer[key] for key in ANSWER_KEYS} for answer in self.predictor.predict_many(images)]


def decoded(value: object) -> bytes:
    """The file in a base64 string; a clear error for anything else."""
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("each record's 'image' must be the base64 of a PNG, JPEG or DICOM file") from None


mlflow.models.set_model(ChestCTModel())
