"""Stage `spectrograms`: each clip's audio to a log-magnitude STFT, log-Mel or log-PSD spectrogram.

Resample to `sample_rate`, loop the clip to exactly `seconds` (tiling, then cutting), clip to [-1, 1], then
- `stft`: log(|STFT| + 1e-7) with a Hann window of n_fft and centred frames, F = n_fft // 2 + 1. CREMA-D's
  default, as the MLB authors' CREMA-D loader computes it (22.05 kHz, 3 s, n_fft 512, hop 353: [257, 188];
  docs/corpora/cremad.md cites their code); UCF101's with its authors' 16 kHz;
- `mel`: log(mel_fbank @ |STFT|^2 + 1e-7), F = n_mels, the same STFT; the default 80 is the largest band
  count that leaves no empty Mel filter at 257 bins and 22.05 kHz (96 leaves one, 128 leave three);
- `psd`: log(scipy.signal.spectrogram(...) + 1e-7), what the authors' AVE code feeds it (frames inside the
  clip, T = 1 + (samples - n_fft) // hop).
The config's own defaults (`mel`, 22.05 kHz, 3 s, 512, 353) serve a corpus that gives none; the built-in
corpora give their authors' settings (their plug-in's `stage_defaults`: kind, sample rate, length, hop,
channel), which params.yaml and the command line override.

Reads the manifest and each clip's `audio` (a sound file, or the audio stream of the video file; inside
the clip's segment when it has one). Writes `OUT/work/spectrograms.h5`, dataset `/spec/<clip id>` float32
[F, T], through the per-clip engine (parallel, resumable, atomic). The maths is in
pipeline.compute.spectrogram.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.compute.spectrogram import loop_into, spectrogram_of_padded, spectrogram_shape
from pipeline.engine import ClipJob, Executor, run_per_clip
from pipeline.engine.per_clip import clip_jobs
from pipeline.manifest import Reason, read_manifest
from pipeline.media import MediaError, read_audio, resample

KINDS = ("mel", "stft", "psd")
CHANNELS = ("mean", "first")


@dataclass(frozen=True)
class SpectrogramConfig:
    """Parameters of the spectrograms stage (params.yaml: `spectrograms`)."""

    kind: str = "mel"  # mel | stft | psd (the built-in corpora set their own: stft or psd)
    sample_rate: int = 22050
    seconds: float = 3.0
    n_fft: int = 512  # also the window length
    hop_length: int = 353
    n_mels: int = 80  # mel only
    channel: str = "mean"  # of a multi-channel recording: the mean of the channels, or the first

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"spectrograms.kind={self.kind!r}: choose one of {', '.join(KINDS)}")
        if self.channel not in CHANNELS:
            raise ValueError(f"spectrograms.channel={self.channel!r}: choose one of {', '.join(CHANNELS)}")
        if self.kind == "psd" and self.num_samples < self.n_fft:
            raise ValueError(
                f"spectrograms.seconds={self.seconds!r}: shorter than one psd frame of n_fft samples"
            )
        for key in ("sample_rate", "n_fft", "hop_length", "n_mels"):
            if getattr(self, key) < 1:
                raise ValueError(f"spectrograms.{key}={getattr(self, key)!r}: must be a positive integer")
        if self.seconds <= 0:
            raise ValueError(f"spectrograms.seconds={self.seconds!r}: must be > 0")

    @property
    def shape(self) -> tuple[int, int]:
        """[F, T] of every spectrogram."""
        return spectrogram_shape(asdict(self))

    @property
    def num_samples(self) -> int:
        return round(self.seconds * self.sample_rate)


def load_fixed_length(
    path: str, config: dict, out: np.ndarray | None = None, segment: tuple[float, float] | None = None
) -> np.ndarray:
    """A clip's audio (inside `segment` when given), mono, resampled to config sample_rate
    (pipeline.media.resample), looped to exactly `seconds`, clipped to [-1, 1]: float32 [num_samples],
    written into `out` when given."""
    samples, sample_rate = read_audio(Path(path), segment, channel=config.get("channel", "mean"))  # [N]
    samples = resample(samples, sample_rate, config["sample_rate"])  # [N * ratio]
    if out is None:
        out = np.empty(SpectrogramConfig(**config).num_samples, np.float32)
    return loop_into(np.clip(samples, -1.0, 1.0), out)  # [num_samples]


def compute_spectrograms(jobs: Sequence[ClipJob], config: dict) -> dict:
    """{clip id: {"spec": float32 [F, T]}}, or an error message for a clip whose audio fails."""
    results: dict = {}
    half = config["n_fft"] // 2
    length = SpectrogramConfig(**config).num_samples
    padded = np.zeros((len(jobs), length + 2 * half), np.float32)  # [B, S + n_fft]: each WAV goes in its row
    ids = []
    for job in jobs:
        try:
            load_fixed_length(
                job.path, config, out=padded[len(ids), half : half + length], segment=job.segment
            )
            ids.append(job.id)
        except (
            MediaError,
            OSError,
            RuntimeError,
            ValueError,
        ) as err:  # soundfile raises RuntimeError subclasses
            results[job.id] = Reason.DECODE_ERROR.says(f"the audio of {job.id} could not be read ({err})")
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
    executor: Executor | None = None,
    progress: bool = True,
) -> dict[str, str]:
    """Write the spectrogram intermediate; returns per-clip errors {clip id: message}."""
    jobs = clip_jobs(read_manifest(manifest_path), root, "audio", "raw")
    return run_per_clip(
        "spectrograms",
        jobs,
        compute_spectrograms,
        asdict(config),
        out_path,
        executor=executor,
        progress=progress,
    )
