"""The MLflow pyfunc model of a run, as MLflow's "models from code": MLflow runs this file when it
loads ``runs:/<id>/model``, so nothing is unpickled. Our own code never imports it (the tracking package
stays the only importer of mlflow); tracking.pyfunc.log_model hands MLflow its path.

Input: a DataFrame with an ``image`` column of encoded image bytes (base64 strings in a served model's JSON: MLflow
decodes them by the signature). Output per row: one probability per class in the run's class order, ``labels`` (the
classes at the run's tuned thresholds, space-separated) and ``error`` (empty, or why the image could not be read: its
probabilities are then empty, and the other rows are still answered). Images are decoded by data.load_image, as
everywhere: one over the pixel limit is refused from its header, before its pixels are decoded. Probabilities are the
numbers the prediction files write (floats.written), and the labels are decided from exactly them.
"""

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class MultiLabelClassifier(PythonModel):
    def load_context(self, context):
        from mlabel_exp.inference.predictor import Predictor
        from mlabel_exp.training.checkpoints import load_checkpoint

        ckpt = load_checkpoint(Path(context.artifacts["checkpoint"]))  # torch.load(weights_only=True)
        self.predictor = Predictor.from_checkpoint(ckpt)  # the same preprocessing and model as predict, on the CPU

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from mlabel_exp.floats import written

        classes, thresholds = self.predictor.classes, self.predictor.thresholds
        probs, errors = self.predictor.predict_encoded(list(model_input["image"]))
        probs = written(probs)  # what the answer's JSON holds; the labels are decided from exactly these
        hits = probs >= written(thresholds)
        out = pd.DataFrame(probs, columns=classes)
        if any(errors):  # JSON has no NaN: an unreadable row's probabilities are null
            out = out.astype(object).where(out.notna(), None)
        out["labels"] = [" ".join(c for c, on in zip(classes, row) if on) for row in hits]
        out["error"] = errors
        return out


mlflow.models.set_model(MultiLabelClassifier())
