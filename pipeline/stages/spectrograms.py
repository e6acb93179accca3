"""Stage `spectrograms`: each kept clip's WAV to a log-Mel (or log-magnitude STFT) spectrogram.

As the paper's public code: resample to 22.05 kHz, loop the clip to exactly 3 s (tiling, then cutting),
clip to [-1, 1], STFT with a 512-sample Hann window and hop 353 (T = 1 + 66150 // 353 = 188 frames).
Then either
- `mel` (default): log(mel_fbank @ |STFT|^2 + 1e-7), F = n_mels; the default 80 is the largest band
  count that leaves no empty Mel filter at 257 bins and 22.05 kHz (96 leaves one, 128 leave three);
- `stft`: log(|STFT| + 1e-7), F = 257, exactly what the authors' code fed the ResNet.

Output: `OUT/work/spectrograms.h5`, dataset `/spec/<clip id>` float32 [F, T], made by
pipeline.stages.run_per_clip (parallel, resumable, atomic).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from pipeline.manifest import read_manifest
from pipeline.media import read_wav_mono
from pipeline.stages import ClipJob, exit_on, report_skipped, run_per_clip
from pipeline.stages.frames import clips_to_process

KINDS = ("mel", "stft")
LOG_EPS = 1e-7


@dataclass(frozen=True)
class SpectrogramConfig:
    kind: str = "mel"  # mel | stft
    sample_rate: int = 22050
    seconds: float = 3.0
    n_fft: int = 512  # also the window length
    hop_length: int = 353
    n_mels: int = 80  # mel only

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"spectrograms.kind={self.kind!r}: choose one of {', '.join(KINDS)}")
        for key in ("sample_rate", "n_fft", "hop_length", "n_mels"):
            if getattr(self, key) < 1:
                raise ValueError(f"spectrograms.{key}={getattr(self, key)!r}: must be a positive integer")
        if self.seconds <= 0:
            raise ValueError(f"spectrograms.seconds={self.seconds!r}: must be > 0")

    @property
    def shape(self) -> tuple[int, int]:
        """[F, T] of every spectrogram."""
        bins = self.n_mels if self.kind == "mel" else self.n_fft // 2 + 1
        return bins, 1 + self.num_samples // self.hop_length

    @property
    def num_samples(self) -> int:
        return round(self.seconds * self.sample_rate)


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


def load_fixed_length(path: str, config: dict, out: np.ndarray | None = None) -> np.ndarray:
    """A WAV, mono, resampled to config sample_rate, looped to exactly `seconds`, clipped to [-1, 1]:
    float32 [num_samples], written into `out` when given.

    Resampling is libsoxr's high-quality band-limited resampler (what librosa.load, which the authors'
    code calls, uses by default)."""
    import soxr

    samples, sample_rate = read_wav_mono(Path(path))  # [N]
    if sample_rate != config["sample_rate"]:
        samples = soxr.resample(samples, sample_rate, config["sample_rate"], quality="HQ")  # [N * ratio]
    if out is None:
        out = np.empty(SpectrogramConfig(**config).num_samples, np.float32)
    return loop_into(np.clip(samples, -1.0, 1.0), out)  # [num_samples]


def compute_spectrograms(jobs: Sequence[ClipJob], config: dict) -> dict:
    """{clip id: {"spec": float32 [F, T]}}, or an error message for a clip whose WAV fails."""
    results: dict = {}
    half = config["n_fft"] // 2
    length = SpectrogramConfig(**config).num_samples
    padded = np.zeros((len(jobs), length + 2 * half), np.float32)  # [B, S + n_fft]: each WAV goes in its row
    ids = []
    for job in jobs:
        try:
            load_fixed_length(job.path, config, out=padded[len(ids), half : half + length])
            ids.append(job.id)
        except (OSError, RuntimeError, ValueError) as err:  # soundfile raises RuntimeError subclasses
            results[job.id] = f"decode-error: the WAV of {job.id} could not be read ({err})"
    if ids:
        specs = spectrogram_of_padded(padded[: len(ids)], config)  # [B, F, T]
        for clip_id, spec in zip(ids, specs, strict=True):
            results[clip_id] = {"spec": spec}  # [F, T], a contiguous slice of the batch
    return results


def run_spectrograms(
    manifest_path: str | Path,
    root: str | Path,
    out_path: str | Path,
    config: SpectrogramConfig,
    *,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, str]:
    """Write the spectrogram intermediate; returns per-clip errors {clip id: message}."""
    jobs = clips_to_process(read_manifest(manifest_path), root, "wav")
    return run_per_clip(
        "spectrograms",
        jobs,
        compute_spectrograms,
        asdict(config),
        out_path,
        workers=workers,
        progress=progress,
    )


def cli(
    manifest: Annotated[Path, typer.Option(help="OUT/manifest.jsonl from the index stage.")],
    root: Annotated[Path, typer.Option("--root", help="Corpus root the manifest's paths are relative to.")],
    out: Annotated[
        Path, typer.Option("--out", help="The HDF5 file to write, e.g. OUT/work/spectrograms.h5.")
    ],
    kind: str = typer.Option("mel", help="mel (log-Mel) | stft (log-magnitude STFT, F = 257)."),
    sample_rate: int = typer.Option(22050, help="Resample the WAV to this rate (Hz)."),
    seconds: float = typer.Option(3.0, help="Loop or cut every clip to this length."),
    n_fft: int = typer.Option(512, help="STFT size and window length."),
    hop_length: int = typer.Option(353, help="STFT hop in samples."),
    n_mels: int = typer.Option(80, help="Mel bands (kind mel)."),
    workers: int = typer.Option(1, help="Processes in parallel (output does not depend on it)."),
) -> None:
    """Compute a fixed-length log spectrogram of every kept clip's WAV."""
    with exit_on(ValueError):
        config = SpectrogramConfig(kind, sample_rate, seconds, n_fft, hop_length, n_mels)
    report_skipped("spectrograms", run_spectrograms(manifest, root, out, config, workers=workers))


if __name__ == "__main__":
    typer.run(cli)
