"""The MLflow pyfunc model of a run, as MLflow's "models from code": MLflow runs this file when it
loads ``runs:/<id>/model``, so nothing is unpickled. Our own code never imports it (tracking.py stays
the only module that imports mlflow); tracking.Tracker.log_model hands MLflow its path.

Input: a DataFrame with an ``image`` column of encoded image bytes. Output: one probability column
per class, in the run's class order.
"""

import io
from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel


class MultiLabelClassifier(PythonModel):
    def load_context(self, context):
        from mlabel_exp.predict import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(Path(context.artifacts["checkpoint"]))  # torch.load(weights_only=True)
        self.classes = list(ckpt["classes"])
        self.model, self.transform = model_from_checkpoint(ckpt)

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import torch
        from PIL import Image

        from mlabel_exp.data import to_rgb

        images = []
        for blob in model_input["image"]:
            with Image.open(io.BytesIO(blob)) as im:
                im.load()
                images.append(self.transform(to_rgb(im)))
        with torch.inference_mode():
            probs = torch.sigmoid(self.model(torch.stack(images)).float()).numpy()
        return pd.DataFrame(probs.astype("float64"), columns=self.classes)


mlflow.models.set_model(MultiLabelClassifier())
