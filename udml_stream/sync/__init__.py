"""Time synchronisation of streams by capture time (imports no torch).

Missing audio is NaN, not zeros: ``AudioRing.window`` marks every sample it does not hold with
NaN, ``valid_fraction`` measures a window, and ``SyncedSample.audio_valid`` carries the share.
"""

from udml_stream.sync.audio_ring import AudioRing, valid_fraction
from udml_stream.sync.pairing import Pairer, PairingConfig, SyncedSample

__all__ = ["AudioRing", "Pairer", "PairingConfig", "SyncedSample", "valid_fraction"]
