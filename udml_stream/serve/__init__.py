"""The fusion runner: checkpoint → device → warm-up → synced samples → fusion results."""

from udml_stream.serve.runner import FusionRunner, Prediction
from udml_stream.serve.service import FusionService

__all__ = ["FusionRunner", "FusionService", "Prediction"]
