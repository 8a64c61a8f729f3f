"""MLflow "models from code" entry of the per-device autoencoders (see ``iotwatch.registry``).

MLflow copies this file into the logged model and runs it to build the model, so no pickled
object is ever stored; the weights come from the model's ``detector`` artifact (a saved folder:
state_dict.pt weights only, scaler.json, threshold.json, model.json; the second member's
sorted.* with ``anomaly.order: both``).
"""

from typing import Any

import mlflow
import mlflow.pyfunc


class AnomalyDetectorModel(mlflow.pyfunc.PythonModel):
    """pyfunc of one device's saved detector folder: rows of features -> score, is_attack."""

    def load_context(self, context: Any) -> None:
        from iotwatch.anomaly.stage import load_device

        self.detector = load_device(context.artifacts["detector"])

    # No annotation on model_input: MLflow would read one as a schema; the signature is logged.
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd

        frame = pd.DataFrame(model_input)
        columns = self.detector.scaler.columns
        x = frame[columns] if set(columns) <= set(frame.columns) else frame
        score = self.detector.score(x.to_numpy(dtype="float64"))
        return pd.DataFrame({"score": score, "is_attack": score > self.detector.threshold})


mlflow.models.set_model(AnomalyDetectorModel())
