"""The registered chest-CT model as MLflow's own scoring server runs it (``mlflow models serve``).

MLflow loads this file as the model's code ("models from code": no pickled Python object), with
the project's package from the model's ``code`` folder and the serving files (the same ones the
app reads) from its artifacts. A request is what the app accepts, as base64:
``{"dataframe_records": [{"image": "<base64 of a PNG, JPEG or DICOM file>"}]}``; each record's
answer is the app's: label, probabilities by class name and the out-of-distribution check. The
app's limits and DICOM window travel with the model (``serving_settings.json``); it computes in
float32 with TensorFlow, the evaluation's reference variant.
"""

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

ANSWER_KEYS = ("label", "probabilities", "in_distribution", "ood_score", "precision", "engine")


class ChestCTModel(PythonModel):
    def load_context(self, context) -> None:
        from cancer_classifier.chest_ct.serving.predictor import MODEL_CARD_FILE, Identity, ModelCard, Predictor
        from cancer_classifier.core.io import load_json
        from cancer_classifier.core.registration import SETTINGS_FILE

        files = Path(context.artifacts["serving"])
        self.settings = load_json(files / SETTINGS_FILE)
        identity = Identity("registered model", "", None, "mlflow")
        card = ModelCard(files / MODEL_CARD_FILE)
        self.predictor = Predictor.from_files(files, card, identity, "tensorflow", "float32")  # the reference

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[dict]:
        from cancer_classifier.chest_ct.serving.inputs import DecodeBudget, Window, from_base64, to_rgb
        from cancer_classifier.serving.errors import ApiError

        settings = self.settings
        if len(model_input) > settings["max_batch"]:
            raise MlflowException.invalid_parameter_value(
                f"{len(model_input)} records in one request; at most {settings['max_batch']} (serving.max_batch)"
            )
        budget, window = DecodeBudget(**settings["decode_budget"]), Window(**settings["dicom_window"])
        try:
            files = [from_base64(value, settings["max_upload_bytes"]) for value in model_input["image"]]
            images = [to_rgb(data, window, budget)[0] for data in files]
        except ApiError as error:  # the app's own message (bad base64, over budget, not an image...)
            raise MlflowException.invalid_parameter_value(str(error)) from None
        return [{key: answer[key] for key in ANSWER_KEYS} for answer in self.predictor.predict_many(images)]


mlflow.models.set_model(ChestCTModel())
