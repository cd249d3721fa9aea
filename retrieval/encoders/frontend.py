"""The audio front end: waveform -> normalised log-mel, and log-mel -> overlapping windows.

Pure numpy and librosa (no torch), so decode workers compute features in parallel and send the
main process arrays that are already small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from retrieval.encoders.config import AudioFrontEnd


def compute_log_mel(wave: np.ndarray, front_end: AudioFrontEnd) -> np.ndarray:
    """Normalised log-mel features (n_mels, frames) float32 of a mono waveform at the front end's rate."""
    import librosa

    if len(wave) < front_end.win_length:  # too short for one analysis frame: pad with silence
        wave = np.pad(wave, (0, front_end.win_length - len(wave)))
    power = librosa.feature.melspectrogram(
        y=np.ascontiguousarray(wave, dtype=np.float32),
        sr=front_end.sample_rate,
        n_fft=front_end.n_fft,
        hop_length=front_end.hop_length,
        win_length=front_end.win_length,
        n_mels=front_end.n_mels,
        fmin=front_end.fmin,
        fmax=front_end.fmax,
        power=2.0,
    )
    # An absolute reference (ref=1.0) keeps loudness in the features instead of normalising it away.
    decibels = librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None)
    return ((decibels + front_end.db_offset) / front_end.db_scale).astype(np.float32)


def silence_level(front_end: AudioFrontEnd) -> float:
    """The feature value of digital silence (the dB floor), used to pad short windows."""
    return (-100.0 + front_end.db_offset) / front_end.db_scale


@dataclass(frozen=True)
class Windows:
    """Log-mel windows of one clip: features, valid frames per window, and time ranges in seconds."""

    features: np.ndarray  # (n, n_mels, window_frames) float32, padded with silence
    lengths: np.ndarray  # (n,) int64, valid frames in each window
    ranges: list[tuple[float, float]]


def split_windows(log_mel: np.ndarray, duration: float, front_end: AudioFrontEnd) -> Windows:
    """Cut (n_mels, T) features into windows of `window_frames` hopping by `window_hop_frames`.

    A clip no longer than one window gives exactly one (padded) window; the last window of a long
    clip is padded too, and `lengths` tells the tower which frames are real.
    """
    n_mels, _frames = log_mel.shape
    size, hop = front_end.window_frames, front_end.window_hop_frames
    # Count from the duration, not the frame count: centred STFT frames add one half-frame at the
    # end, which must not open a window of its own.
    content = round(duration * front_end.frames_per_second)
    count = 1 if content <= size else 1 + math.ceil((content - size) / hop)
    features = np.full((count, n_mels, size), silence_level(front_end), dtype=np.float32)
    lengths = np.empty(count, dtype=np.int64)
    ranges = []
    for index in range(count):
        start = index * hop
        chunk = log_mel[:, start : start + size]
        features[index, :, : chunk.shape[1]] = chunk
        lengths[index] = chunk.shape[1]
        begin = start / front_end.frames_per_second
        ranges.append((round(begin, 3), round(min(begin + front_end.window_seconds, duration), 3)))
    return Windows(features, lengths, ranges)
