"""The MLflow pyfunc model of a run, as MLflow's "models from code": MLflow runs this file when it
loads ``runs:/<id>/model``, so nothing is unpickled. Our own code never imports it (tracking.py stays
the only module that imports mlflow); tracking.Tracker.log_model hands MLflow its path.

Input: a DataFrame with an ``image`` column of encoded image bytes. Output: one probability column
per class, in the run's class order.
"""

import io
from pathlib import Path

import mlflow
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

        images = []
        for blob in model_input["image"]:
            with Image.open(io.BytesIO(blob)) as im:
                im.load()
                images.append(to_rgb(im))
        probs = self.predictor.predict_images(images)
        return pd.DataFrame(probs.astype("float64"), columns=self.predictor.classes)


mlflow.models.set_model(MultiLabelClassifier())
