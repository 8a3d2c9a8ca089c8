"""Audio sources: a sounddevice microphone (any PortAudio device, PulseAudio included) and a
WAV file played in real time (the fallback when there is no audio server).

Each chunk is stamped with the capture time of its first sample on the host monotonic clock:
for a device, the block's ADC time from PortAudio mapped onto the host clock.
"""

from __future__ import annotations

import logging
import queue
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from udml_stream.messages import AudioChunk
from udml_stream.sensors.base import Source, SourceError

log = logging.getLogger(__name__)


def _sd() -> Any:
    try:
        import sounddevice
    except OSError as err:  # PortAudio library missing
        raise SourceError(f"sounddevice cannot load PortAudio ({err}); install libportaudio2 "
                          "(scripts/setup does, as root)") from None
    return sounddevice


def list_input_devices() -> list[str]:
    """``index: name`` of every PortAudio device with input channels."""
    sd = _sd()
    return [f"{i}: {d['name']}" for i, d in enumerate(sd.query_devices())
            if d["max_input_channels"] > 0]


class MicrophoneSource(Source):
    """Chunks from a PortAudio input device via a sounddevice callback stream."""

    def __init__(self, device: str | int | None = None, stream: str = "mic",
                 sample_rate: int = 16000, chunk_samples: int = 320, queue_chunks: int = 500) -> None:
        self.device = int(device) if isinstance(device, str) and device.isdigit() else device
        self.stream, self.sample_rate, self.chunk_samples = stream, sample_rate, chunk_samples
        self._q: queue.Queue[AudioChunk] = queue.Queue(maxsize=queue_chunks)
        self._sd_stream: Any = None
        self._seq = 0
        self.overflows = 0  # PortAudio input overflows (samples lost in the driver)
        self.dropped = 0  # chunks lost because the reader fell behind the queue
        self._offset_s: float | None = None

    def connect(self) -> None:
        """Open the input stream; a missing device lists the available ones."""
        sd = _sd()
        try:
            sd.check_input_settings(device=self.device, channels=1, dtype="float32",
                                    samplerate=self.sample_rate)
            self._sd_stream = sd.InputStream(
                device=self.device, channels=1, dtype="float32", samplerate=self.sample_rate,
                blocksize=self.chunk_samples, callback=self._callback)
            self._sd_stream.start()
        except (ValueError, sd.PortAudioError) as err:
            raise SourceError(f"cannot open microphone {self.device!r}: {err}; input devices: "
                              f"{list_input_devices() or 'none'}") from None

    def _callback(self, indata: np.ndarray, frames: int, t: Any, status: Any) -> None:
        if status.input_overflow:
            self.overflows += 1
        now = time.monotonic()
        adc = float(t.inputBufferAdcTime)
        if adc > 0:
            # Map PortAudio's stream clock onto the host monotonic clock once, at the first block.
            if self._offset_s is None:
                self._offset_s = now - float(t.currentTime)
            cap = adc + self._offset_s
        else:  # backends without ADC times: the block ended about now
            cap = now - frames / self.sample_rate
        chunk = AudioChunk(self.stream, self._seq, int(cap * 1e9), samples=indata[:, 0].copy(),
                           sample_rate=self.sample_rate)
        self._seq += 1
        try:
            self._q.put_nowait(chunk)
        except queue.Full:
            self.dropped += 1

    def read(self, timeout_s: float) -> AudioChunk | None:
        """The next chunk, in order."""
        try:
            return self._q.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Stop and close the stream."""
        if self._sd_stream is not None:
            self._sd_stream.stop()
            self._sd_stream.close()
            self._sd_stream = None


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the rate of a 16-bit PCM WAV file."""
    try:
        with wave.open(str(path)) as wf:
            if wf.getsampwidth() != 2:
                raise SourceError(f"{path}: only 16-bit PCM WAV is supported")
            raw = np.frombuffer(wf.readframes(wf.getnframes()), dtype="<i2")
            x = raw.reshape(-1, wf.getnchannels())[:, 0].astype(np.float32) / 32768.0
            return x, wf.getframerate()
    except (OSError, wave.Error) as err:
        raise SourceError(f"cannot read WAV file {path}: {err}") from None


def write_wav(path: Path, x: np.ndarray, sample_rate: int) -> None:
    """Write mono float samples in [-1, 1] as 16-bit PCM."""
    pcm = np.clip(np.round(x * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(sample_rate)
        wf.writeframes(pcm.tobytes())


class FileAudioSource(Source):
    """A WAV file played in real time in chunks, aligned to a shared wall-clock start."""

    def __init__(self, path: Path, stream: str = "mic", chunk_samples: int = 320,
                 loop: bool = False, start_at_unix: float | None = None) -> None:
        self.path, self.stream, self.chunk_samples = Path(path), stream, chunk_samples
        self.loop, self.start_at_unix = loop, start_at_unix
        self._x: np.ndarray | None = None
        self.sample_rate = 0
        self._idx = 0
        self._done = False
        self._offset_ns = 0

    def connect(self) -> None:
        """Load the file and fix the start time."""
        if not self.path.is_file():
            raise SourceError(f"audio file {self.path} not found")
        self._x, self.sample_rate = read_wav(self.path)
        if self.start_at_unix is None:
            self.start_at_unix = time.time()
        # Wall-clock start → monotonic start, so stamps share the other nodes' clock.
        self._offset_ns = time.monotonic_ns() - time.time_ns()
        n_chunks = len(self._x) // self.chunk_samples
        elapsed = time.time() - self.start_at_unix
        self._idx = max(0, int(elapsed * self.sample_rate) // self.chunk_samples)
        if self.loop and n_chunks:
            self._idx %= n_chunks

    def read(self, timeout_s: float) -> AudioChunk | None:
        """The next chunk once its last sample is due."""
        assert self._x is not None and self.start_at_unix is not None
        n_chunks = len(self._x) // self.chunk_samples
        if self._idx >= n_chunks:
            if not self.loop or n_chunks == 0:
                self._done = True
                time.sleep(min(timeout_s, 0.05))
                return None
            self._idx = 0
            self.start_at_unix += n_chunks * self.chunk_samples / self.sample_rate
        first = self._idx * self.chunk_samples
        start_unix = self.start_at_unix + first / self.sample_rate
        due = start_unix + self.chunk_samples / self.sample_rate
        delay = due - time.time()
        if delay > timeout_s:
            time.sleep(timeout_s)
            return None
        if delay > 0:
            time.sleep(delay)
        chunk = AudioChunk(self.stream, self._idx, int(start_unix * 1e9) + self._offset_ns,
                           samples=self._x[first : first + self.chunk_samples].copy(),
                           sample_rate=self.sample_rate)
        self._idx += 1
        return chunk

    @property
    def finished(self) -> bool:
        """True once a non-looping file has been played to its end."""
        return self._done

    def close(self) -> None:
        """Nothing to release but the samples."""
        self._x = None
