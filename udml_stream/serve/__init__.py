"""The fusion runner: checkpoint → device → warm-up → synced samples → fusion results."""

from udml_stream.serve.runner import FusionRunner, Prediction

__all__ = ["FusionRunner", "Prediction"]
