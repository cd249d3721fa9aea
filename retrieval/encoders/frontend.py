"""The audio front end: waveform -> normalised log-mel, and log-mel -> overlapping windows.

The mel filterbank is librosa's (`librosa.filters.mel`, Slaney scale and norm), computed once per
process and handed to decode workers with their inputs; the power STFT and the dB conversion are
the same arithmetic as `librosa.feature.melspectrogram` and `librosa.power_to_db` (centred frames,
zero padding, periodic Hann window), written in numpy because importing librosa's feature and
filter modules pulls in scipy.signal and numba: about two seconds in every worker and every
audio query. A test holds the two equal. No torch here.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from retrieval.encoders.config import AudioFrontEnd

_AMIN = 1e-10  # librosa.power_to_db's floor: -100 dB


@functools.lru_cache(maxsize=8)
def mel_filterbank(front_end: AudioFrontEnd) -> np.ndarray:
    """librosa's mel filterbank for this front end: (n_mels, n_fft // 2 + 1) float32."""
    import librosa.filters

    bank = librosa.filters.mel(sr=front_end.sample_rate, n_fft=front_end.n_fft, n_mels=front_end.n_mels,
                               fmin=front_end.fmin, fmax=front_end.fmax)
    bank = bank.astype(np.float32)
    bank.setflags(write=False)  # shared by every caller of the cache
    return bank


@functools.lru_cache(maxsize=8)
def _window(n_fft: int, win_length: int) -> np.ndarray:
    """A periodic Hann window of win_length, centred in n_fft zeros (librosa.stft's window)."""
    n = np.arange(win_length)
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
    left = (n_fft - win_length) // 2
    return np.pad(hann, (left, n_fft - win_length - left))


def _power_spectrogram(wave: np.ndarray, front_end: AudioFrontEnd) -> np.ndarray:
    """|STFT|^2 with centred frames: (n_fft // 2 + 1, 1 + len(wave) // hop) float32."""
    n_fft, hop = front_end.n_fft, front_end.hop_length
    padded = np.pad(wave.astype(np.float32, copy=False), n_fft // 2)  # zeros, as librosa pads
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]  # (T, n_fft)
    spectrum = np.fft.rfft(frames * _window(n_fft, front_end.win_length), axis=1)  # (T, F)
    return (spectrum.real**2 + spectrum.imag**2).T.astype(np.float32)


def compute_log_mel(wave: np.ndarray, front_end: AudioFrontEnd, filterbank: np.ndarray | None = None) -> np.ndarray:
    """Normalised log-mel features (n_mels, frames) float32 of a mono waveform at the front end's rate.

    Args:
        filterbank: `mel_filterbank(front_end)`, passed by workers that received it ready-made.
    """
    if filterbank is None:
        filterbank = mel_filterbank(front_end)
    if len(wave) < front_end.win_length:  # too short for one analysis frame: pad with silence
        wave = np.pad(wave, (0, front_end.win_length - len(wave)))
    mel_power = filterbank @ _power_spectrogram(wave, front_end)  # (n_mels, T)
    # An absolute reference (ref=1.0) keeps loudness in the features instead of normalising it away.
    decibels = 10.0 * np.log10(np.maximum(mel_power, _AMIN))
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
