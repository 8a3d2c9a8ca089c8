"""The Foxglove layout shipped as ``configs/foxglove_layout.json``, built with foxglove-sdk's
layout types (``foxglove.layouts``) so its structure follows the SDK's layout format.

Left: the camera (Image panel) over the predicted class (Indicator panel). Right: the effective
weight and σ̂ of each modality, the audio level, and the prediction over time (State
Transitions). Topics are the single robot's viewer channels; for a fleet, build it with
``prefix="<robot>/"``. Every series uses receive time: in the live view that is the capture
time (``udml view`` stamps messages with it), in an exported log the recorder's log time, which
is what Foxglove's timeline plays.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import foxglove.layouts as fl

from udml_stream.logs.foxglove import view_topic

#: Modalities of the fusion model (keys of ``weights`` and ``sigma_hat`` in a fusion result).
MODALITIES = ("image", "audio")
CLASS_NAMES = tuple(str(d) for d in range(10))
# Ten distinguishable colours, one per class (Tableau 10).
_COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
            "#ff9da7", "#9c755f", "#bab0ac")


def build_layout(prefix: str = "", class_names: Sequence[str] = CLASS_NAMES,
                 modalities: Sequence[str] = MODALITIES) -> str:
    """The layout JSON for the streams ``<prefix>camera``, ``<prefix>mic``, ``<prefix>fused``."""
    image = view_topic(f"{prefix}camera", "camera_frame")
    level = view_topic(f"{prefix}mic", "audio_chunk")
    fused = view_topic(f"{prefix}fused", "fusion_result")

    def series(path: str, label: str) -> fl.PlotSeries:
        return fl.PlotSeries(value=path, label=label, enabled=True, timestamp_method="receiveTime")

    weights = fl.PlotPanel(title="effective weight per modality", config=fl.PlotConfig(
        paths=[series(f"{fused}.weights.{m}", f"weight {m}") for m in modalities],
        min_y_value=0, max_y_value=1, show_legend=True, time_window_mode="sliding",
        following_view_width=30))
    sigma = fl.PlotPanel(title="σ̂ (estimated degradation) per modality", config=fl.PlotConfig(
        paths=[series(f"{fused}.sigma_hat.{m}", f"σ̂ {m}") for m in modalities],
        min_y_value=0, show_legend=True, time_window_mode="sliding", following_view_width=30))
    audio = fl.PlotPanel(title="audio level (dBFS)", config=fl.PlotConfig(
        paths=[series(f"{level}.rms_dbfs", "RMS"), series(f"{level}.peak_dbfs", "peak")],
        max_y_value=0, show_legend=True, time_window_mode="sliding", following_view_width=30))
    indicator = fl.IndicatorPanel(title="prediction", config=fl.IndicatorConfig(
        path=f"{fused}.label", style="background", font_size=48,
        rules=[fl.IndicatorRule(operator="=", raw_value=name, color=_COLOURS[i % 10], label=name)
               for i, name in enumerate(class_names)],
        fallback_color="#808080", fallback_label="–"))
    states = fl.StateTransitionsPanel(title="prediction over time", config=fl.StateTransitionsConfig(
        paths=[fl.StateTransitionsSeries(value=f"{fused}.label", label="prediction",
                                         timestamp_method="receiveTime")],
        time_window_mode="sliding", x_axis_range=30, show_points=False))
    camera = fl.ImagePanel(title="camera", config=fl.ImageConfig(
        image_mode=fl.ImageModeConfig(image_topic=image)))

    layout = fl.Layout(content=fl.SplitContainer(direction="row", items=[
        fl.SplitItem(proportion=3, content=fl.SplitContainer(direction="column", items=[
            fl.SplitItem(proportion=3, content=camera),
            fl.SplitItem(proportion=1, content=indicator),
        ])),
        fl.SplitItem(proportion=2, content=fl.SplitContainer(direction="column", items=[
            fl.SplitItem(content=weights), fl.SplitItem(content=sigma),
            fl.SplitItem(content=audio), fl.SplitItem(content=states),
        ])),
    ]))
    # Indented for review in the repository; the SDK writes it on one line.
    return json.dumps(json.loads(layout.to_json()), indent=2, ensure_ascii=False) + "\n"


def write_layout(path: Path, prefix: str = "") -> Path:
    """Write ``build_layout(prefix)`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_layout(prefix), encoding="utf-8")
    return path
