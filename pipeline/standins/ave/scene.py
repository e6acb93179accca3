"""What a synthetic AVE video shows and sounds like.

Each of the 28 categories has a cue in both modalities, present only during the video's event segment:
- audio: a major triad whose root is the category's own pitch (28 steps of 11 % from 220 Hz to ~3.7 kHz,
  so its fifth stays below the 8 kHz that 16 kHz audio holds), pulsing at the category's rate (1-4 Hz),
  over a bed of noise falling off above 300 Hz that runs through the whole video;
- video: a shape (disc, square, triangle, cross: category // 7) in a hue (one of 7: category % 7) at a
  random place, over a per-video colour gradient with a grey square drifting across it all video long.
Strength 0 removes a cue, 1 is the built-in level; label noise shows another category's cue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

NOISE_LEVEL = 0.03  # std of the background noise bed
NOISE_CORNER_HZ = 300.0
TONE_LEVEL = 0.3  # peak of the triad at cue strength 1
FADE_S = 0.01  # the triad fades in and out over this long (no clicks at the event's edges)
ROOT_HZ, ROOT_STEP = 220.0, 1.11
TRIAD = (1.0, 1.25, 1.5)  # root, major third, fifth
HUES = (  # RGB, far apart on the colour wheel
    (230, 40, 40),
    (240, 140, 20),
    (230, 220, 30),
    (40, 190, 60),
    (30, 200, 210),
    (40, 70, 230),
    (200, 50, 200),
)
SHAPES = ("disc", "square", "triangle", "cross")


@dataclass(frozen=True)
class Look:
    """The picture of one video: what stays the same in every frame, drawn from the video's own
    generator."""

    top: tuple[int, int, int]  # gradient colours, top and bottom
    bottom: tuple[int, int, int]
    centre: tuple[float, float]  # (y, x) of the category shape, as fractions of the frame
    drift_y: float  # row of the drifting grey square, as a fraction of the height
    drift_speed: float  # its speed, frame widths per second
    drift_grey: int


def random_look(rng: np.random.Generator) -> Look:
    top, bottom = (tuple(int(v) for v in rng.integers(0, 150, 3)) for _ in range(2))
    return Look(
        top=top,
        bottom=bottom,
        centre=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.25, 0.75))),
        drift_y=float(rng.uniform(0.05, 0.8)),
        drift_speed=float(rng.uniform(0.05, 0.2)),
        drift_grey=int(rng.integers(90, 200)),
    )


def root_hz(category: int) -> float:
    return ROOT_HZ * ROOT_STEP**category


def pulse_hz(category: int) -> float:
    return 1.0 + category % 4


def render_audio(
    n_samples: int,
    sample_rate: int,
    channels: int,
    category: int | None,
    cue: float,
    event: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """float32 [channels, n_samples] in [-1, 1]: the noise bed everywhere, plus the triad of `category`
    at strength `cue` inside `event` = (start, end) in seconds (none for category None or cue 0)."""
    # white noise shaped to fall off above NOISE_CORNER_HZ (numpy's FFT: importing scipy.signal costs
    # more than making a video)
    spectrum = np.fft.rfft(rng.standard_normal(n_samples))  # [N // 2 + 1]
    spectrum /= 1.0 + np.fft.rfftfreq(n_samples, 1.0 / sample_rate) / NOISE_CORNER_HZ
    noise = np.fft.irfft(spectrum, n_samples)  # [N] a rumble
    sound = NOISE_LEVEL * noise / max(float(noise.std()), 1e-9)  # [N]
    if category is not None and cue > 0:
        first, last = (min(n_samples, round(t * sample_rate)) for t in event)
        t = np.arange(last - first) / sample_rate  # [n] seconds from the event's start
        phases = rng.uniform(0, 2 * np.pi, len(TRIAD))
        triad = sum(
            np.sin(2 * np.pi * root_hz(category) * r * t + p) for r, p in zip(TRIAD, phases, strict=True)
        )
        pulse = 0.6 + 0.4 * np.cos(2 * np.pi * pulse_hz(category) * t)  # [n]
        fade = np.clip(np.minimum(t, t[-1] - t) / FADE_S, 0, 1) if t.size else t  # [n]
        sound[first:last] += TONE_LEVEL * cue / len(TRIAD) * triad * pulse * fade
    sound = np.clip(sound, -1.0, 1.0).astype(np.float32)  # [N]
    return np.repeat(sound[None, :], channels, axis=0)  # [C, N]: the same sound on every channel


def shape_mask(shape: str, height: int, width: int, centre: tuple[float, float]) -> np.ndarray:
    """float32 [height, width]: 1 inside `shape` centred at `centre` (fractions of the frame), 0 outside;
    its size is ~45 % of the shorter side."""
    radius = 0.22 * min(height, width)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)  # [H, W] each
    dy, dx = y - centre[0] * height, x - centre[1] * width  # [H, W]
    if shape == "disc":
        inside = dy**2 + dx**2 <= radius**2
    elif shape == "square":
        inside = (np.abs(dy) <= radius * 0.85) & (np.abs(dx) <= radius * 0.85)
    elif shape == "triangle":  # apex up
        inside = (dy <= radius) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) / 2)
    else:  # cross
        arm = radius * 0.3
        inside = ((np.abs(dy) <= arm) & (np.abs(dx) <= radius)) | (
            (np.abs(dx) <= arm) & (np.abs(dy) <= radius)
        )
    return inside.astype(np.float32)


def frame_maker(
    look: Look,
    width: int,
    height: int,
    fps: int,
    category: int | None,
    cue: float,
    event: tuple[float, float],
) -> Callable[[int], np.ndarray]:
    """frame(i) -> uint8 [height, width, 3] RGB of frame i: the gradient and the drifting square, plus
    the shape of `category` at strength `cue` while i / fps is inside `event` = [start, end) seconds."""
    blend = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]  # [H, 1, 1]
    top, bottom = np.array(look.top, np.float32), np.array(look.bottom, np.float32)  # [3] each
    background = np.broadcast_to((1 - blend) * top + blend * bottom, (height, width, 3))  # [H, W, 3]
    plain = background.round().astype(np.uint8)  # [H, W, 3]
    with_cue = plain
    if category is not None and cue > 0:
        alpha = min(1.0, 0.9 * cue) * shape_mask(SHAPES[category // len(HUES)], height, width, look.centre)
        colour = np.array(HUES[category % len(HUES)], np.float32)  # [3]
        with_cue = (background * (1 - alpha[..., None]) + colour * alpha[..., None]).round().astype(np.uint8)
    side = max(2, height // 6)
    row = min(height - side, round(look.drift_y * height))

    def frame(i: int) -> np.ndarray:
        t = i / fps
        picture = (with_cue if event[0] <= t < event[1] else plain).copy()  # [H, W, 3]
        left = round((look.drift_speed * t % 1.0) * (width - side))
        picture[row : row + side, left : left + side] = look.drift_grey
        return picture

    return frame
