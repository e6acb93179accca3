"""The stand-in's sound and pictures. Each class has a signature in both modalities, keyed by its classInd
index k (1-101), so every class's differs:

- sound: two tones at f_k = 300 + 48 (k - 1) Hz and 1.5 f_k (within 8 kHz, so they survive the 16 kHz
  resampling), amplitude-modulated at 2 + (k mod 5) Hz, over a distractor tone at a random pitch and the
  group's room noise;
- pictures: a disc of the class's hue circling on a class-specific path over the group's scene (a
  gradient with a few blocks: the clips of a group share their scene, as UCF101's groups share actor and
  background), with a distractor square of a random colour bouncing about.

`strength` scales the signature: 0 = absent (only distractors: the modality is uninformative), 1 = the
built-in level, > 1 = more prominent. Everything random comes from the generator passed in.
"""

from __future__ import annotations

import colorsys

import numpy as np

SAMPLE_RATE = 44100


def class_tones(index: int) -> tuple[float, float, float]:
    """(f1, f2, modulation rate) in Hz of class `index` (classInd's 1-based index)."""
    f1 = 300.0 + 48.0 * (index - 1)
    return f1, 1.5 * f1, 2.0 + index % 5


def _tone(t: np.ndarray, f1: float, f2: float, rate: float, phase: float) -> np.ndarray:
    carrier = np.sin(2 * np.pi * f1 * t + phase) + 0.6 * np.sin(2 * np.pi * f2 * t + 2 * phase)  # [N]
    return carrier * (0.55 + 0.45 * np.sin(2 * np.pi * rate * t + phase))  # [N]


def render_audio(
    n_samples: int, index: int, strength: float, channels: int, room: float, rng: np.random.Generator
) -> np.ndarray:
    """float32 [channels, n_samples] in [-1, 1] at 44.1 kHz: class `index`'s tones at `strength` over a
    distractor and noise low-passed by `room` (a one-pole coefficient in [0, 1), the group's). A second
    channel is the first damped, plus noise of its own (so the first channel and the mean differ)."""
    t = np.arange(n_samples) / SAMPLE_RATE  # [N]
    signal = strength * _tone(t, *class_tones(index), rng.uniform(0, 2 * np.pi))  # [N]
    decoy = class_tones(int(rng.integers(1, 102)))
    signal = signal + 0.6 * _tone(
        t, decoy[0] * rng.uniform(0.97, 1.03), decoy[1], decoy[2], rng.uniform(0, 6)
    )
    noise = _low_pass(rng.standard_normal(n_samples), room)  # [N]
    left = signal + 0.3 * noise / max(np.abs(noise).max(), 1e-9)  # [N]
    left *= 0.5 / max(np.abs(left).max(), 1e-9)
    if channels == 1:
        return left[None].astype(np.float32)  # [1, N]
    right = 0.7 * left + 0.1 * rng.standard_normal(n_samples)  # [N]
    return np.clip(np.stack([left, right]), -1, 1).astype(np.float32)  # [2, N]


def _low_pass(x: np.ndarray, a: float) -> np.ndarray:
    """y[n] = (1 - a) x[n] + a y[n - 1]: [N] -> [N]."""
    from scipy.signal import lfilter

    return lfilter([1 - a], [1, -a], x)


def scene(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A group's background: a vertical gradient between two muted colours with a few flat blocks, uint8
    [height, width, 3]."""
    top, bottom = rng.uniform(30, 200, 3), rng.uniform(30, 200, 3)
    ramp = np.linspace(0, 1, height)[:, None, None]  # [H, 1, 1]
    image = np.broadcast_to(top + (bottom - top) * ramp, (height, width, 3)).copy()  # [H, W, 3]
    for _ in range(3):
        w, h = int(rng.integers(width // 8, width // 3)), int(rng.integers(height // 8, height // 3))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        image[y : y + h, x : x + w] = rng.uniform(20, 230, 3)
    return image.astype(np.uint8)


def class_colour(index: int) -> np.ndarray:
    """The RGB of class `index`'s disc: hue index / 101 at full saturation, float [3] in 0-255."""
    return 255.0 * np.array(colorsys.hsv_to_rgb((index - 1) / 101, 1.0, 1.0))


def render_frames(
    background: np.ndarray, n_frames: int, fps: float, index: int, strength: float, rng: np.random.Generator
) -> np.ndarray:
    """uint8 [n_frames, H, W, 3]: class `index`'s disc (opacity min(strength, 1), radius growing with
    strength beyond 1) circling on its path over `background`, and a distractor square."""
    height, width = background.shape[:2]
    frames = np.repeat(background[None], n_frames, axis=0)  # [T, H, W, 3]
    speed = 2 * np.pi * (0.2 + 0.6 * index / 101)  # rad/s: the class's own pace along its path
    phase, radius = rng.uniform(0, 2 * np.pi), 0.09 * height * (1 + 0.5 * max(strength - 1, 0))
    opacity, colour = min(strength, 1.0), class_colour(index)
    side = int(0.18 * height)
    decoy = rng.uniform(0, 255, 3)
    pos = rng.uniform([0, 0], [width - side, height - side])  # [2] px
    vel = rng.uniform(-80, 80, 2) / fps  # [2] px per frame
    for i, frame in enumerate(frames):
        t = i / fps
        cx = width / 2 + 0.3 * width * np.cos(speed * t + phase)
        cy = height / 2 + 0.25 * height * np.sin(2 * speed * t + phase)
        if opacity > 0:  # drawn inside its bounding box only
            x0, x1 = max(int(cx - radius), 0), min(int(cx + radius) + 1, width)
            y0, y1 = max(int(cy - radius), 0), min(int(cy + radius) + 1, height)
            yy, xx = np.ogrid[y0:y1, x0:x1]  # [h, 1], [1, w]
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2  # [h, w]
            box = frame[y0:y1, x0:x1]  # [h, w, 3] (a view)
            box[disc] = ((1 - opacity) * box[disc] + opacity * colour).astype(np.uint8)
        pos += vel
        for axis, limit in ((0, width - side), (1, height - side)):
            if not 0 <= pos[axis] <= limit:  # bounce off the border
                vel[axis] = -vel[axis]
                pos[axis] = np.clip(pos[axis], 0, limit)
        x, y = int(pos[0]), int(pos[1])
        frame[y : y + side, x : x + side] = decoy.astype(np.uint8)
    return frames
