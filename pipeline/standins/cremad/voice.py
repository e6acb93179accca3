"""Speech-like audio for the synthetic corpus: a voiced harmonic source with a syllable rhythm, shaped by
moving formants, carrying an emotion in its prosody.

Emotion cues (see `PROSODY`): pitch level and range, tempo (syllable rate), energy and spectral tilt.
Actor cues (see `Voice`): base pitch, vocal-tract length (formant scale), breathiness, tilt offset.
Everything is numpy-vectorised over time and harmonics; no per-sample Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000

# Syllables per CREMA-D sentence ("It's eleven o'clock" = 5 ...): the rhythm of each sentence.
SENTENCE_SYLLABLES = {
    "IEO": 5,
    "TIE": 8,
    "IOM": 8,
    "IWW": 8,
    "TAI": 8,
    "MTI": 8,
    "IWL": 9,
    "ITH": 10,
    "DFA": 5,
    "ITS": 7,
    "TSI": 5,
    "WSI": 8,
}


@dataclass(frozen=True)
class Prosody:
    """How an emotion sounds, relative to a neutral voice (all 1.0 / NEU values = neutral)."""

    pitch: float  # multiplies the actor's base f0
    pitch_range: float  # intonation excursion, fraction of f0
    tempo: float  # syllable rate multiplier (> 1: faster)
    energy: float  # loudness multiplier
    tilt: float  # harmonic roll-off exponent (higher = darker, softer voice)
    jitter: float  # random f0 wobble, fraction of f0


# Deliberately uneven: ANG/HAP and NEU/DIS are close in prosody (the face separates them), so the audio is
# the stronger modality but the video is complementary.
PROSODY = {
    "ANG": Prosody(pitch=1.30, pitch_range=0.30, tempo=1.15, energy=1.60, tilt=0.70, jitter=0.020),
    "DIS": Prosody(pitch=0.95, pitch_range=0.16, tempo=0.92, energy=0.90, tilt=1.45, jitter=0.010),
    "FEA": Prosody(pitch=1.50, pitch_range=0.22, tempo=1.30, energy=0.80, tilt=1.10, jitter=0.045),
    "HAP": Prosody(pitch=1.35, pitch_range=0.40, tempo=1.12, energy=1.40, tilt=0.85, jitter=0.015),
    "NEU": Prosody(pitch=1.00, pitch_range=0.12, tempo=1.00, energy=1.00, tilt=1.30, jitter=0.008),
    "SAD": Prosody(pitch=0.82, pitch_range=0.06, tempo=0.72, energy=0.55, tilt=1.90, jitter=0.010),
}

# Emotional intensity of the CREMA-D levels (XX = unspecified).
LEVEL_INTENSITY = {"LO": 0.6, "MD": 0.85, "HI": 1.25, "XX": 1.0}


@dataclass(frozen=True)
class Voice:
    """One actor's voice."""

    f0: float  # base pitch in Hz
    formant_scale: float  # > 1: shorter vocal tract (higher formants)
    breath: float  # aspiration noise level relative to the voiced part
    tilt_offset: float  # added to the emotion's spectral tilt


def blend_prosody(emotion: str, strength: float) -> Prosody:
    """Neutral prosody moved towards `emotion`'s by `strength` (0: neutral, 1: as in PROSODY, > 1: more)."""
    neu, emo = PROSODY["NEU"], PROSODY[emotion]
    return Prosody(
        *(
            getattr(neu, f) + strength * (getattr(emo, f) - getattr(neu, f))
            for f in Prosody.__dataclass_fields__
        )
    )


def random_voice(rng: np.random.Generator, sex: str) -> Voice:
    """A plausible voice for an actor of the given sex ("Male" / "Female")."""
    female = sex == "Female"
    return Voice(
        f0=float(rng.uniform(175, 235) if female else rng.uniform(95, 145)),
        formant_scale=float(rng.uniform(1.10, 1.22) if female else rng.uniform(0.92, 1.04)),
        breath=float(rng.uniform(0.02, 0.08)),
        tilt_offset=float(rng.uniform(-0.2, 0.2)),
    )


# Vowel formants (F1, F2, F3) in Hz of an adult male; a syllable picks one.
_VOWELS = np.array(
    [
        [730, 1090, 2440],
        [530, 1840, 2480],
        [270, 2290, 3010],
        [570, 840, 2410],
        [300, 870, 2240],
        [660, 1720, 2410],
        [490, 1350, 1690],
    ],
    dtype=np.float64,
)
_BANDWIDTHS = np.array([90.0, 110.0, 170.0], dtype=np.float32)


def syllable_plan(n_samples: int, sentence: str, tempo: float, rng: np.random.Generator) -> np.ndarray:
    """Onset and offset sample of every syllable, [n_syllables, 2], inside the clip with some silence
    around the sentence. Faster tempo = shorter syllables."""
    n_syl = SENTENCE_SYLLABLES.get(sentence, 7)
    duration = n_samples / SAMPLE_RATE
    lead = rng.uniform(0.12, 0.3)
    syl = rng.uniform(0.8, 1.2, n_syl) * 0.2 / tempo  # seconds per syllable
    speech = min(syl.sum(), duration - lead - 0.1)
    syl *= speech / syl.sum()
    starts = lead + np.concatenate([[0.0], np.cumsum(syl)[:-1]])
    return (np.stack([starts, starts + syl * 0.85], axis=1) * SAMPLE_RATE).astype(np.int64)


def envelope(n_samples: int, syllables: np.ndarray) -> np.ndarray:
    """Loudness envelope in [0, 1], [n_samples]: a smooth bump per syllable."""
    t = np.arange(n_samples)[None, :]  # [1, N]
    on, off = syllables[:, :1], syllables[:, 1:]  # [S, 1]
    phase = np.clip((t - on) / np.maximum(off - on, 1), 0.0, 1.0)  # [S, N]
    bumps = np.sin(np.pi * phase) ** 0.7 * ((t >= on) & (t <= off))
    return bumps.max(axis=0)


def synthesize(
    n_samples: int, sentence: str, voice: Voice, prosody: Prosody, intensity: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One utterance: (waveform float32 [n_samples] in [-1, 1], loudness envelope float32 [n_samples]).

    `intensity` scales how far the prosody departs from neutral (the CREMA-D level)."""
    neu = PROSODY["NEU"]
    p = Prosody(
        *(
            getattr(neu, f) + intensity * (getattr(prosody, f) - getattr(neu, f))
            for f in Prosody.__dataclass_fields__
        )
    )
    syllables = syllable_plan(n_samples, sentence, max(p.tempo, 0.3), rng)
    env = envelope(n_samples, syllables)  # [N]
    t = np.arange(n_samples) / SAMPLE_RATE

    # Pitch contour: declination over the sentence, a random accent per syllable, jitter.
    n_syl = len(syllables)
    accents = rng.uniform(-1, 1, n_syl)
    centers = syllables.mean(axis=1) / SAMPLE_RATE
    accent_curve = np.interp(t, centers, accents)  # [N]
    declination = 1.0 - 0.08 * t / max(t[-1], 1e-3)
    wobble = np.interp(
        t, np.linspace(0, t[-1], max(int(t[-1] * 25), 2)), rng.standard_normal(max(int(t[-1] * 25), 2))
    )
    f0 = (
        voice.f0
        * max(p.pitch, 0.3)
        * declination
        * (1 + p.pitch_range * accent_curve)
        * (1 + p.jitter * wobble)
    )
    f0 = np.clip(f0, 50, 600)  # [N]
    phase = np.mod(2 * np.pi * np.cumsum(f0) / SAMPLE_RATE, 2 * np.pi).astype(np.float32)  # [N]

    # Harmonics weighted by a spectral tilt and by three formant resonances that move between vowels
    # (float32: the [K, N] arrays dominate the cost).
    n_harm = 40
    k = np.arange(1, n_harm + 1, dtype=np.float32)[:, None]  # [K, 1]
    vowel_of_syl = rng.integers(0, len(_VOWELS), n_syl)
    formants = np.stack([np.interp(t, centers, _VOWELS[vowel_of_syl, i]) for i in range(3)])  # [3, N]
    formants = (formants * voice.formant_scale).astype(np.float32)
    freq = k * f0.astype(np.float32)[None, :]  # [K, N]
    resonance = sum(1.0 / (1.0 + ((freq - formants[i]) / _BANDWIDTHS[i]) ** 2) for i in range(3))  # [K, N]
    tilt = max(p.tilt + voice.tilt_offset, 0.2)
    amp = (k**-tilt) * (0.15 + resonance) * (freq < SAMPLE_RATE / 2 - 500)  # [K, N]
    voiced = (amp * np.sin(k * phase[None, :])).sum(axis=0, dtype=np.float64)  # [N]
    voiced /= np.abs(voiced).max() + 1e-9

    breath = voice.breath * rng.standard_normal(n_samples)
    energy = max(p.energy, 0.05)
    wave = 0.22 * energy * env * (voiced + breath) + 0.002 * rng.standard_normal(n_samples)  # room noise
    return np.clip(wave, -1.0, 1.0).astype(np.float32), env.astype(np.float32)
