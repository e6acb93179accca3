"""Spectrogram maths on waveforms already in memory: looping to a fixed length, the periodic Hann window, the
HTK Mel filterbank and the batched log-Mel / log-magnitude STFT. Plain numpy and scipy (no torch: the worker
processes start in a fraction of a second without it). No file I/O: the spectrograms stage reads the audio.
"""

from __future__ import annotations

import functools

import numpy as np

LOG_EPS = 1e-7


def spectrogram_shape(config: dict) -> tuple[int, int]:
    """[F, T] of every spectrogram made with `config` (the spectrograms stage's config as a dict): F = n_mels
    (mel) or n_fft // 2 + 1 (stft, psd); T = 1 + samples // hop with centred frames (mel, stft), or
    1 + (samples - n_fft) // hop with frames inside the clip (psd)."""
    bins = config["n_mels"] if config["kind"] == "mel" else config["n_fft"] // 2 + 1
    samples = round(config["seconds"] * config["sample_rate"])
    if config["kind"] == "psd":
        return bins, 1 + (samples - config["n_fft"]) // config["hop_length"]
    return bins, 1 + samples // config["hop_length"]


def loop_into(samples: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write a clip into `out`, tiled until `out` is full, then cut: [N] -> out [L]."""
    if samples.size == 0:
        raise ValueError("cannot loop an empty clip")
    filled = min(samples.size, out.size)
    out[:filled] = samples[:filled]
    while filled < out.size:  # double what is there: whole periods, the last one cut
        step = min(filled, out.size - filled)
        out[filled : filled + step] = out[:step]
        filled += step
    return out


def hann_window(length: int) -> np.ndarray:
    """Periodic Hann window (as torch.hann_window and librosa use for STFTs): float32 [length]."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def mel_filterbank(n_freqs: int, sample_rate: int, n_mels: int) -> np.ndarray:
    """Triangular filters on the HTK mel scale from 0 Hz to Nyquist, no area normalisation (the
    defaults of torchaudio's melscale_fbanks, which a test compares against): float32 [n_freqs, n_mels]."""

    def hz_to_mel(hz):
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def mel_to_hz(mel):
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    freqs = np.linspace(0, sample_rate / 2, n_freqs)  # [n_freqs] centre of each STFT bin
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))  # [n_mels + 2]
    widths = np.diff(edges)  # [n_mels + 1]
    rising = (freqs[:, None] - edges[None, :-2]) / widths[None, :-1]  # [n_freqs, n_mels]
    falling = (edges[None, 2:] - freqs[:, None]) / widths[None, 1:]  # [n_freqs, n_mels]
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def spectrogram_batch(waves: np.ndarray, config: dict) -> np.ndarray:
    """[B, num_samples] float32 waveforms at config sample_rate -> [B, F, T] float32 log spectrograms.

    Plain numpy/scipy (no torch: the worker processes start in a fraction of a second without it).
    Centred frames with zero padding of n_fft // 2 on each side, as torch.stft(center=True) and librosa.
    """
    half = config["n_fft"] // 2
    return spectrogram_of_padded(np.pad(waves.astype(np.float32, copy=False), ((0, 0), (half, half))), config)


def spectrogram_of_padded(padded: np.ndarray, config: dict) -> np.ndarray:
    """spectrogram_batch of waveforms already padded with n_fft // 2 zeros on each side: float32
    [B, num_samples + n_fft] -> [B, F, T]. The log and the square work in place (same values, fewer
    passes over memory)."""
    import scipy.fft
    from numpy.lib.stride_tricks import sliding_window_view

    n_fft, hop = config["n_fft"], config["hop_length"]
    if config["kind"] == "psd":
        return psd_spectrogram(padded[:, n_fft // 2 : padded.shape[1] - n_fft // 2], config)
    frames = sliding_window_view(padded, n_fft, axis=1)[:, ::hop]  # [B, T, n_fft] (a view, no copy)
    magnitude = np.abs(scipy.fft.rfft(frames * hann_window(n_fft), axis=-1))  # [B, T, n_fft // 2 + 1]
    if config["kind"] == "stft":
        spec = magnitude  # [B, T, F]
    else:
        fbank = mel_filterbank(
            n_fft // 2 + 1, config["sample_rate"], config["n_mels"]
        )  # [n_fft//2+1, n_mels]
        spec = np.square(magnitude, out=magnitude) @ fbank  # [B, T, n_mels]
    spec += LOG_EPS
    np.log(spec, out=spec)
    return np.ascontiguousarray(spec.transpose(0, 2, 1), dtype=np.float32)  # [B, F, T]


def psd_spectrogram(waves: np.ndarray, config: dict) -> np.ndarray:
    """[B, num_samples] -> [B, F, T] float32 log(PSD + 1e-7): `scipy.signal.spectrogram` with its defaults (a
    Tukey window of shape 0.25, the mean of each frame removed, density scaling, frames inside the clip with
    no centring), nperseg n_fft and noverlap n_fft - hop: what the MLB authors' AVE code feeds the ResNet."""
    from scipy.signal import spectrogram

    n_fft, hop = config["n_fft"], config["hop_length"]
    _, _, psd = spectrogram(
        waves, fs=config["sample_rate"], nperseg=n_fft, noverlap=n_fft - hop, axis=-1
    )  # [B, F, T]
    psd += LOG_EPS
    np.log(psd, out=psd)
    return np.ascontiguousarray(psd, dtype=np.float32)
