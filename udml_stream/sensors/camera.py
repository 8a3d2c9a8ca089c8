"""Camera source over OpenCV ``VideoCapture``: a device index, a video file or a stream URL.

OpenCV buffers several frames inside the capture, so a slow reader would get stale ones: a grab
thread reads continuously and keeps only the newest frame, stamped at grab time. Files are paced
at their frame rate (optionally looped and aligned to a shared wall-clock start), and their
sequence number is the frame's index in the file, so a restarted node continues the same count.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from udml_stream.messages import CameraFrame
from udml_stream.sensors.base import Source, SourceError

log = logging.getLogger(__name__)


#: ``cv2.rotate`` codes for a clockwise turn of the image by so many degrees.
_ROTATE = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
#: ``cv2.flip`` codes: a mirror about the vertical axis (left ↔ right) or the horizontal one.
_FLIP = {"horizontal": 1, "vertical": 0}


def orient(img: np.ndarray, rotate: int = 0, flip: str = "none") -> np.ndarray:
    """``img`` mirrored (``flip``: none, horizontal = left ↔ right, vertical = top ↔ bottom),
    then turned ``rotate`` degrees clockwise (0, 90, 180, 270): a camera mounted on its side,
    upside down or behind a mirror, set right before anything downstream sees it."""
    if flip != "none":
        img = cv2.flip(img, _FLIP[flip])
    if rotate:
        img = cv2.rotate(img, _ROTATE[rotate])
    return img


def list_video_devices() -> list[str]:
    """Video devices this machine exposes (``/dev/video*``)."""
    return sorted(str(p) for p in Path("/dev").glob("video*"))


class CameraSource(Source):
    """Frames from a camera device, a video file or a network stream, newest only."""

    def __init__(
        self,
        source: str | int,
        stream: str = "camera",
        fps: float | None = None,
        loop: bool = False,
        start_at_unix: float | None = None,
        width: int | None = None,
        height: int | None = None,
        rotate: int = 0,
        flip: str = "none",
    ) -> None:
        self.source = int(source) if isinstance(source, str) and source.isdigit() else source
        self.stream = stream
        self.is_file = isinstance(self.source, str) and Path(self.source).is_file()
        self.fps, self.loop, self.start_at_unix = fps, loop, start_at_unix
        self.width, self.height = width, height
        if rotate not in (0, *_ROTATE) or flip not in ("none", *_FLIP):
            raise SourceError(f"camera {stream}: rotate = {rotate!r}, flip = {flip!r}; expected "
                              "rotate 0, 90, 180 or 270 and flip none, horizontal or vertical")
        self.rotate, self.flip = rotate, flip
        self._cap: cv2.VideoCapture | None = None
        self._lock = threading.Condition()
        self._latest: CameraFrame | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._done = False
        self._seq = 0
        self.grabbed = 0
        self.overwritten = 0  # frames replaced before anyone read them (reader too slow)

    def connect(self) -> None:
        """Open the capture and start the grab thread."""
        cap = cv2.VideoCapture(self.source)
        if not cap.isOpened():
            cap.release()
            if isinstance(self.source, int):
                raise SourceError(f"camera device {self.source} not found; video devices here: "
                                  f"{list_video_devices() or 'none'}")
            raise SourceError(f"cannot open video source {self.source!r} (file missing, "
                              "unsupported codec or stream unreachable)")
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.is_file and not self.fps:
            self.fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
        self._cap = cap
        self._thread = threading.Thread(target=self._grab_loop, name=f"grab-{self.stream}",
                                        daemon=True)
        self._thread.start()

    def _file_position(self, n_frames: int) -> int:
        """Frame index where a paced file should be now (aligned to ``start_at_unix``)."""
        if self.start_at_unix is None:
            self.start_at_unix = time.time()
        idx = int((time.time() - self.start_at_unix) * (self.fps or 30.0))
        return idx % n_frames if self.loop and n_frames > 0 else idx

    def _grab_loop(self) -> None:
        cap = self._cap
        assert cap is not None
        n_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if self.is_file else 0
        pos = 0
        if self.is_file:
            if self.start_at_unix is not None and time.time() < self.start_at_unix:
                self._stop.wait(self.start_at_unix - time.time())
            pos = max(0, self._file_position(n_frames))
            if pos:
                cap.set(cv2.CAP_PROP_POS_FRAMES, pos)
        period = 1.0 / (self.fps or 30.0)
        while not self._stop.is_set():
            if self.is_file:
                # Pace by the file's clock: frame k is due at start + k / fps.
                due = self.start_at_unix + pos / (self.fps or 30.0)
                delay = due - time.time()
                if delay > 0:
                    self._stop.wait(delay)
                elif delay < -period:  # fell behind: skip ahead instead of drifting
                    pos = self._file_position(n_frames)
                    cap.set(cv2.CAP_PROP_POS_FRAMES, pos)
            ok, img = cap.read()
            t_ns = time.monotonic_ns()
            if not ok:
                if self.is_file and self.loop and n_frames:
                    self.start_at_unix = time.time()
                    pos = 0
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    continue
                with self._lock:
                    self._done = True
                    self._lock.notify_all()
                return
            seq = pos if self.is_file else self._seq
            self._seq += 1
            pos += 1
            img = orient(img, self.rotate, self.flip)
            frame = CameraFrame(self.stream, seq, t_ns, image=np.ascontiguousarray(img),
                                encoding="bgr8" if img.ndim == 3 else "mono8")
            with self._lock:
                if self._latest is not None:
                    self.overwritten += 1
                self._latest = frame
                self.grabbed += 1
                self._lock.notify_all()

    def read(self, timeout_s: float) -> CameraFrame | None:
        """The newest frame not yet read, waiting up to ``timeout_s``."""
        with self._lock:
            if self._latest is None and not self._done:
                self._lock.wait(timeout_s)
            frame, self._latest = self._latest, None
            return frame

    @property
    def finished(self) -> bool:
        """True once a non-looping file has been played to its end and read."""
        return self._done and self._latest is None

    def close(self) -> None:
        """Stop the grab thread and release the capture."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None
