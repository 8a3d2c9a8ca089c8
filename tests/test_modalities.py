"""The modality registry, the N-stream pairer and the two-camera AV-Digits preset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SMALL
from udml_stream import corrupt, modalities
from udml_stream.data import avdigits
from udml_stream.data.batching import make_batch
from udml_stream.errors import ConfigError
from udml_stream.messages import AudioChunk, CameraFrame
from udml_stream.messages.codec import _ENCODINGS, KINDS
from udml_stream.sync import Pairer, PairingConfig

MS = 1_000_000
T0 = 10_000_000_000
#: The two-camera preset without the PCA weakening (the SVD takes seconds; tests stay fast).
TWOCAM = avdigits.Preset("twocam-test", "raw", image_pca_energy=1.0, cameras=2)


# ---- the registry --------------------------------------------------------------------------


def test_registry_entries_agree_with_codec_and_corruption() -> None:
    for kind in modalities.REGISTRY.values():
        assert kind.corrupt in corrupt.FAMILIES
        assert kind.families() == corrupt.FAMILIES[kind.corrupt]
        assert kind.message is None or kind.message in KINDS
    assert set(modalities.IMAGE.encodings) == set(_ENCODINGS)
    assert modalities.IMAGE.sync == "trigger" and modalities.AUDIO.sync == "window"


def test_naming_rule_table_then_name_then_numbered_name() -> None:
    assert modalities.kind_of("image").name == "image"
    assert modalities.kind_of("image2").name == "image"
    assert modalities.kind_of("audio_3").name == "audio"
    assert modalities.kind_of("front", {"front": "image"}).name == "image"
    # A table wins over the name.
    assert modalities.kind_of("image", {"image": "audio"}).name == "audio"
    for bad in ("depth", "2", "imagery"):
        with pytest.raises(ConfigError, match=repr(bad)):
            modalities.kind_of(bad)
    with pytest.raises(ConfigError, match="kind 'lidar'"):
        modalities.kind_of("front", {"front": "lidar"})
    assert [modalities.default_topic(n) for n in ("image", "image2", "audio", "audio_2")] == \
        ["camera", "camera2", "mic", "mic_2"]
    assert modalities.default_topic("front", {"front": "image"}) == "front"


def test_old_checkpoint_preprocessing_resolves_unchanged() -> None:
    pre = {"image": {"kind": "image"}, "audio": {"kind": "logmel"}}
    assert modalities.kinds_from_preprocess(pre) == {"image": "image", "audio": "audio"}
    with pytest.raises(ConfigError, match="'spectro'"):
        modalities.kinds_from_preprocess({"x": {"kind": "spectro"}})


def test_duplicate_kinds_and_bad_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        modalities.register(modalities.IMAGE)
    with pytest.raises(ConfigError, match="trailing number"):
        modalities.register(modalities.ModalityKind(
            "depth2", "camera_frame", ("mono8",), "trigger", "image", "x", "image", None, None))
    assert "depth2" not in modalities.REGISTRY


def test_live_streams_name_topics_and_refuse_clashes() -> None:
    s = modalities.live_streams(("image", "image2", "audio"), {"image": "cam"})
    assert [(x.name, x.kind.name, x.topic) for x in s] == [
        ("image", "image", "cam"), ("image2", "image", "camera2"), ("audio", "audio", "mic")]
    with pytest.raises(ConfigError, match="both read topic 'camera'"):
        modalities.live_streams(("image", "image2", "audio"), {"image2": "camera"})
    with pytest.raises(ConfigError, match="name no modality"):
        modalities.live_streams(("image", "audio"), {"image2": "camera2"})
    with pytest.raises(ConfigError, match="no live sensor"):
        modalities.live_streams(("image", "mfcc"))


def test_registry_imports_neither_torch_nor_numpy() -> None:
    code = ("import sys, udml_stream.modalities as m; m.kind_of('image2'); "
            "print(sorted(k for k in ('torch', 'numpy', 'cv2') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "[]"


# ---- the N-stream pairer -------------------------------------------------------------------


def _img(v: int) -> np.ndarray:
    return np.full((4, 6, 3), v, np.uint8)


def _audio(pairer: Pairer, t0: int, n: int, seq0: int = 0) -> None:
    for i in range(n):
        pairer.add(AudioChunk("mic", seq0 + i, t0 + i * 20 * MS,
                              samples=np.zeros(320, np.float32)), t0 + (i + 1) * 20 * MS)


def test_pairer_adds_the_other_cameras_newest_frame_within_its_age_bound() -> None:
    cfg = PairingConfig(window_samples=1600, other_max_age_ns=50 * MS)
    p = Pairer(cfg, "camera", "mic", others=["camera2"])
    _audio(p, T0, 10)  # 200 ms of audio
    now = T0 + 200 * MS
    p.add(CameraFrame("camera2", 7, T0 + 150 * MS, image=_img(2)), now)
    p.add(CameraFrame("camera", 3, T0 + 180 * MS, image=_img(1)), now)
    s = p.ready(now)
    assert s is not None and s.frame.seq == 3 and s.audio is not None
    assert s.others["camera2"].seq == 7 and s.source_seq == {"camera": 3, "mic": 9, "camera2": 7}
    # The second camera's frame is now 60 ms older than the next trigger frame: left out.
    p.add(CameraFrame("camera", 4, T0 + 210 * MS, image=_img(1)), now + 5 * MS)
    _audio(p, T0 + 200 * MS, 1, seq0=10)
    s = p.ready(now + 25 * MS)
    assert s is not None and s.others == {} and "camera2" not in s.source_seq
    assert p.others_stale == 1


def test_pairer_falls_back_to_the_other_camera_when_the_trigger_camera_dies() -> None:
    cfg = PairingConfig(window_samples=1600, camera_deadline_ns=100 * MS,
                        audio_deadline_ns=100 * MS)
    p = Pairer(cfg, "camera", "mic", others=["camera2"])
    p.add(CameraFrame("camera", 0, T0, image=_img(1)), T0)
    assert p.ready(T0) is not None or p.ready(T0 + 100 * MS) is not None
    # Only the second camera goes on: no audio, the trigger camera silent.
    now = T0
    got = []
    for i in range(1, 30):
        now = T0 + i * 33 * MS
        p.add(CameraFrame("camera2", i, now, image=_img(2)), now)
        if (s := p.ready(now)) is not None:
            got.append(s)
    assert got and all(s.frame is None and s.audio is None for s in got)
    assert all(set(s.others) == {"camera2"} and s.t_ns == s.others["camera2"].capture_ns
               for s in got)
    with pytest.raises(ValueError, match="distinct"):
        Pairer(cfg, "camera", "mic", others=["camera"])


# ---- the two-camera preset -----------------------------------------------------------------


def test_twocam_preset_draws_a_second_image_of_the_same_digit(cache_dir: Path) -> None:
    data = avdigits.load(TWOCAM, cache_dir, **SMALL)
    assert data.modalities == ("image", "image2", "audio")
    assert avdigits.PRESETS["twocam"].cameras == 2
    with np.load(avdigits.BuildSpec(track="raw", **SMALL).path(cache_dir)) as z:
        labels, split_of = z["image_labels"], z["image_split"]
    for i, name in enumerate(avdigits.SPLITS):
        sp = data.splits[name]
        first, second = sp.index["image"], sp.index["image2"]
        assert (labels[second] == sp.labels).all() and (split_of[second] == i).all()
        assert (first != second).mean() > 0.99  # independently drawn: another view
    again = avdigits.load(TWOCAM, cache_dir, **SMALL)
    assert (again.splits["test"].index["image2"] == data.splits["test"].index["image2"]).all()
    # The second camera is corrupted as an image (its kind), at its own level.
    sp = data.splits["train"]
    rows = np.arange(8)
    lv = {"image": np.ones(8, np.int64), "image2": np.full(8, 11), "audio": np.ones(8, np.int64)}
    b = make_batch(sp, rows, lv, np.random.default_rng(0))
    assert b.inputs["image2"].shape == b.inputs["image"].shape == (8, 28, 28)
    assert (b.families["image2"] == corrupt.TRAIN_KINDS["image"]).all()
    assert not np.allclose(b.inputs["image2"], sp.batch(rows)["image2"])
    assert np.array_equal(b.inputs["image"], sp.batch(rows)["image"])


def test_registry_default_encoders_match_the_training_defaults() -> None:
    from udml_stream.train.config import DEFAULT_ENCODERS

    assert {k: v.encoder for k, v in modalities.REGISTRY.items()} == DEFAULT_ENCODERS


def test_launch_file_with_two_cameras_validates_its_streams(tmp_path: Path) -> None:
    from udml_stream.launch.config import write_launch

    nodes = {
        "cam_front": {"program": "camera", "source": "0", "endpoint": "ipc:///tmp/udml-front"},
        "cam_side": {"program": "camera", "stream": "camera2", "source": "1",
                     "endpoint": "ipc:///tmp/udml-side"},
        "fusion": {"program": "fusion", "endpoint": "ipc:///tmp/udml-fused",
                   "subscribe": ["ipc:///tmp/udml-front", "ipc:///tmp/udml-side"],
                   "streams": {"image": "camera", "image2": "camera2", "audio": "mic"}},
    }
    launch = write_launch(tmp_path / "ok.toml", nodes)
    assert launch.nodes["fusion"].streams["image2"] == "camera2"
    assert launch.nodes["fusion"].other_max_age_ms == 100.0
    bad = {**nodes, "fusion": {**nodes["fusion"], "streams": {"depth": "d", "audio": "mic"}}}
    with pytest.raises(ConfigError, match=r"streams.*'depth'"):
        write_launch(tmp_path / "bad.toml", bad)
    twice = {**nodes, "fusion": {**nodes["fusion"], "streams": {"image": "c", "image2": "c"}}}
    with pytest.raises(ConfigError, match="two modalities read one topic"):
        write_launch(tmp_path / "twice.toml", twice)


def test_demo_scene_covers_the_second_camera_alone(cache_dir: Path, tmp_path: Path) -> None:
    import cv2

    from udml_stream.demo.run import demo_launch, scene_spec
    from udml_stream.demo.scene import SceneSpec, build_scene
    from udml_stream.launch.config import load_launch

    data = avdigits.load(TWOCAM, cache_dir, **SMALL)
    assert ("camera2_covered", 5) in scene_spec(data).plan
    spec = SceneSpec(plan=(("clean", 1), ("camera2_covered", 1)), segment_s=1.5, fps=4.0)
    scene = build_scene(data, tmp_path, spec)
    assert scene.video2 is not None

    def means(path: Path) -> list[float]:
        cap = cv2.VideoCapture(str(path))
        out = []
        while (frame := cap.read())[0]:
            out.append(float(frame[1].mean()))
        cap.release()
        return out

    first, second = means(scene.video), means(scene.video2)
    assert len(first) == len(second) == 12
    # Covered: the second camera goes nearly black in the second digit, the first does not.
    assert max(second[6:]) < 0.2 * min(second[:6]) and min(first[6:]) > max(second[6:]) + 1
    nodes = load_launch(demo_launch(scene, tmp_path, tmp_path / "ckpt", 0.0, False)).nodes
    assert nodes["camera2"].stream == "camera2" and len(nodes["fusion"].subscribe) == 3
    one = avdigits.load(avdigits.Preset("one-cam", "raw", image_pca_energy=1.0), cache_dir,
                        **SMALL)
    with pytest.raises(ValueError, match="two-camera data"):
        build_scene(one, tmp_path / "one", spec)
