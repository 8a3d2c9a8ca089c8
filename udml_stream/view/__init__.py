"""Foxglove views of the live streams (``udml view``) and of finished logs
(``udml log export --format foxglove``); the channels are built by ``logs/foxglove.py``."""

from udml_stream.view.export import ExportReport, export_foxglove

__all__ = ["ExportReport", "export_foxglove"]
