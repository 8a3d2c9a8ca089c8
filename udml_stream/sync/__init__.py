"""Time synchronisation of streams by capture time (imports no torch)."""

from udml_stream.sync.audio_ring import AudioRing
from udml_stream.sync.pairing import Pairer, PairingConfig, SyncedSample

__all__ = ["AudioRing", "Pairer", "PairingConfig", "SyncedSample"]
