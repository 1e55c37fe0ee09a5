"""The MLflow pyfunc model of a run, as MLflow's "models from code": MLflow runs this file when it
loads ``runs:/<id>/model``, so nothing is unpickled. Our own code never imports it (tracking.py stays
the only module that imports mlflow); tracking.Tracker.log_model hands MLflow its path.

Input: a DataFrame with an ``image`` column of encoded image bytes (base64 strings in a served model's JSON: MLflow
decodes them by the signature). Output per row: one probability per class in the run's class order, ``labels`` (the
classes at the run's tuned thresholds, space-separated) and ``error`` (empty, or why the image could not be read: its
probabilities are then empty, and the other rows are still answered).
"""

import io
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class MultiLabelClassifier(PythonModel):
    def load_context(self, context):
        from mlabel_exp.predictor import Predictor, load_checkpoint

        ckpt = load_checkpoint(Path(context.artifacts["checkpoint"]))  # torch.load(weights_only=True)
        self.predictor = Predictor.from_checkpoint(ckpt)  # the same preprocessing and model as predict, on the CPU

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from PIL import Image

        from mlabel_exp.data import to_rgb

        classes = self.predictor.classes
        images, errors = {}, [""] * len(model_input)
        for row, blob in enumerate(model_input["image"]):
            try:
                with Image.open(io.BytesIO(blob)) as im:
                    im.load()
                    images[row] = to_rgb(im)
            except Exception as e:  # noqa: BLE001 - any undecodable input is that row's error, not the request's
                errors[row] = f"row {row}: not a readable image ({type(e).__name__})"
        probs = np.full((len(model_input), len(classes)), np.nan)
        if images:
            probs[list(images)] = self.predictor.predict_images(list(images.values()))
        hits = probs >= self.predictor.thresholds
        out = pd.DataFrame(probs, columns=classes)
        if len(images) < len(model_input):  # JSON has no NaN: an unreadable row's probabilities are null
            out = out.astype(object).where(out.notna(), None)
        out["labels"] = [" ".join(c for c, on in zip(classes, row) if on) for row in hits]
        out["error"] = errors
        return out


mlflow.models.set_model(MultiLabelClassifier())
