"""Talking faces for the synthetic corpus: a real human face (scikit-image's astronaut photo, which MTCNN
detects) placed on a per-actor background, with the emotion drawn inside the face region and the mouth
opening with the loudness of the voice.

Emotion cues (see `EXPRESSIONS`): brow angle and height, eye openness, mouth width / curve / opening, and a
colour tint of the skin. Actor cues (see `Look`): position, scale, skin tone, background colour.
Drawing uses OpenCV primitives and numpy array operations, never per-pixel Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

# Crop of skimage.data.astronaut() around the head (rows, cols) and facial landmarks inside that crop
# (x, y), measured once with MTCNN on the original photo.
_CROP_ROWS, _CROP_COLS = slice(20, 230), slice(140, 310)  # 210 x 170 pixels
_EYES = np.array([[65.0, 82.0], [107.0, 84.0]])
_MOUTH = np.array([84.0, 121.0])
_MOUTH_HALF_WIDTH = 21.0
_HEAD_CENTER, _HEAD_AXES = (85.0, 105.0), (80.0, 106.0)  # soft ellipse that keeps head and hair


@dataclass(frozen=True)
class Expression:
    """How an emotion looks. Units are template pixels (the face crop is 170 wide) or fractions."""

    brow_raise: float  # brow height above its rest position (negative = lowered)
    brow_tilt: float  # inner ends up (> 0, sad / fearful) or down (< 0, angry)
    eye_open: float  # 1 = rest; < 1 lids lowered (narrowed), > 1 widened (white shows)
    mouth_width: float  # multiplies the mouth's rest width
    mouth_curve: float  # corners up (> 0, smile) or down (< 0)
    mouth_open: float  # how far the mouth opens at full loudness
    tint: tuple[float, float, float]  # RGB gain on the skin


EXPRESSIONS = {
    "ANG": Expression(
        brow_raise=-4,
        brow_tilt=-5,
        eye_open=0.75,
        mouth_width=0.90,
        mouth_curve=-3,
        mouth_open=7,
        tint=(1.18, 0.92, 0.90),
    ),
    "DIS": Expression(
        brow_raise=-3,
        brow_tilt=-2,
        eye_open=0.6,
        mouth_width=0.85,
        mouth_curve=-6,
        mouth_open=4,
        tint=(1.00, 1.08, 0.86),
    ),
    "FEA": Expression(
        brow_raise=6,
        brow_tilt=4,
        eye_open=1.45,
        mouth_width=1.05,
        mouth_curve=-2,
        mouth_open=9,
        tint=(0.92, 0.94, 1.10),
    ),
    "HAP": Expression(
        brow_raise=1,
        brow_tilt=0,
        eye_open=1.0,
        mouth_width=1.15,
        mouth_curve=6,
        mouth_open=6,
        tint=(1.08, 1.02, 0.94),
    ),
    "NEU": Expression(
        brow_raise=0,
        brow_tilt=0,
        eye_open=1.0,
        mouth_width=1.0,
        mouth_curve=0,
        mouth_open=5,
        tint=(1.0, 1.0, 1.0),
    ),
    "SAD": Expression(
        brow_raise=2,
        brow_tilt=5,
        eye_open=0.8,
        mouth_width=0.95,
        mouth_curve=-5,
        mouth_open=3,
        tint=(0.90, 0.95, 1.08),
    ),
}


@dataclass(frozen=True)
class Look:
    """One actor's appearance: where the head sits in the frame and how it is coloured."""

    center: tuple[float, float]  # head centre as a fraction of frame width and height
    scale: float  # head height as a fraction of frame height
    skin: tuple[float, float, float]  # RGB gain on the whole head (skin tone)
    background: tuple[int, int, int]  # RGB
    flip: bool  # mirror the face


def random_look(rng: np.random.Generator) -> Look:
    """A plausible per-actor appearance."""
    tone = rng.uniform(0.55, 1.1)
    return Look(
        center=(float(rng.uniform(0.4, 0.6)), float(rng.uniform(0.45, 0.55))),
        scale=float(rng.uniform(0.6, 0.85)),
        skin=(
            float(tone * rng.uniform(0.95, 1.05)),
            float(tone * rng.uniform(0.9, 1.0)),
            float(tone * rng.uniform(0.85, 1.0)),
        ),
        background=tuple(int(v) for v in rng.integers(30, 225, 3)),
        flip=bool(rng.integers(0, 2)),
    )


def blend_expression(emotion: str, strength: float) -> Expression:
    """Neutral expression moved towards `emotion`'s by `strength` (0: neutral, 1: as in EXPRESSIONS)."""
    neu, emo = EXPRESSIONS["NEU"], EXPRESSIONS[emotion]
    tint = tuple(a + strength * (b - a) for a, b in zip(neu.tint, emo.tint))
    scalars = {
        f: getattr(neu, f) + strength * (getattr(emo, f) - getattr(neu, f))
        for f in Expression.__dataclass_fields__
        if f != "tint"
    }
    return Expression(**scalars, tint=tint)


@lru_cache(maxsize=1)
def _template() -> tuple[np.ndarray, np.ndarray]:
    """The head crop as float32 RGB [210, 170, 3] and its soft alpha mask [210, 170] in [0, 1]."""
    from skimage.data import astronaut

    face = astronaut()[_CROP_ROWS, _CROP_COLS].astype(np.float32)
    h, w = face.shape[:2]
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(
        mask,
        (int(_HEAD_CENTER[0]), int(_HEAD_CENTER[1])),
        (int(_HEAD_AXES[0]), int(_HEAD_AXES[1])),
        0,
        0,
        360,
        1.0,
        -1,
    )
    mask = cv2.GaussianBlur(mask, (0, 0), 6)
    return face, mask


def _skin_colour(face: np.ndarray) -> np.ndarray:
    """Mean colour of the cheeks of the template, RGB float [3] (used to paint lids over the eyes)."""
    return face[95:105, 50:60].reshape(-1, 3).mean(axis=0)


def _draw_expression(face: np.ndarray, expr: Expression) -> np.ndarray:
    """The still parts of an expression (brows, eyes, tint) drawn on the template, float32 [h, w, 3]."""
    face = face.copy()
    skin = _skin_colour(face)
    # Eyes: lower the lids (skin over the upper eye) or widen (white above the iris).
    for x, y in _EYES:
        if expr.eye_open < 1:
            lid = round(7 * (1 - expr.eye_open))
            cv2.ellipse(face, (int(x), int(y) - 5), (10, 2 + lid), 0, 0, 360, skin.tolist(), -1)
        elif expr.eye_open > 1:
            white = round(6 * (expr.eye_open - 1))
            cv2.ellipse(face, (int(x), int(y) - 4), (9, 1 + white), 0, 180, 360, (235, 232, 228), -1)
    # Brows: a dark stroke per eye, raised/lowered and tilted at the inner end.
    brow_colour = (70, 50, 35)
    for side, (x, y) in zip((1, -1), _EYES):  # side: +1 where the inner (nose) end lies at larger x
        y_rest = y - 13 - expr.brow_raise
        outer = (int(x - side * 11), round(y_rest))
        inner = (int(x + side * 9), round(y_rest - expr.brow_tilt))
        cv2.line(face, outer, inner, brow_colour, 3, cv2.LINE_AA)
    # Skin tint inside the head (the hair is tinted too: cheap and it stays inside the face crop).
    face *= np.asarray(expr.tint, np.float32)[None, None, :]
    return face


def _mouth_polygons(expr: Expression, opening: float) -> tuple[np.ndarray, np.ndarray]:
    """Lips and mouth opening as polygons in template pixels, float [30, 2] (x, y) each; `opening` in
    [0, 1] is the voice's loudness now."""
    cx, cy = _MOUTH
    half = _MOUTH_HALF_WIDTH * expr.mouth_width
    xs = np.linspace(cx - half, cx + half, 15)
    u = (xs - cx) / half  # [-1, 1] along the mouth
    corner_lift = -expr.mouth_curve * u**2  # y grows downward: a smile lifts the corners
    gap = expr.mouth_open * opening * (1 - u**2)  # [15]
    upper = np.stack([xs, cy + corner_lift - gap * 0.35], axis=1)  # [15, 2]
    lower = np.stack([xs, cy + corner_lift + gap * 0.65 + 1.5], axis=1)
    lips = np.concatenate([upper - [0, 2.5], lower[::-1] + [0, 2.5]])
    inside = np.concatenate([upper, lower[::-1]])
    return lips, inside


_SUBPIXEL = 4  # cv2 fixed-point bits: polygons are drawn with 1/16-pixel precision


def render_frames(
    look: Look, expr: Expression, loudness: np.ndarray, width: int, height: int, rng: np.random.Generator
) -> np.ndarray:
    """Frames of one talking face, uint8 [T, height, width, 3] RGB; `loudness` [T] in [0, 1] per frame.

    The still head is composed once; per frame the picture moves a little (sway, nod with loudness) and
    the mouth is drawn open as far as the voice is loud."""
    face, mask = _template()
    face = _draw_expression(face, expr) * np.asarray(look.skin, np.float32)[None, None, :]
    th, tw = face.shape[:2]
    s = look.scale * height / th  # template pixel -> frame pixel
    ow, oh = max(int(tw * s), 8), max(int(th * s), 8)
    head = cv2.resize(face, (ow, oh), interpolation=cv2.INTER_AREA)  # [oh, ow, 3]
    alpha = cv2.resize(mask, (ow, oh), interpolation=cv2.INTER_AREA)[..., None]  # [oh, ow, 1]
    if look.flip:
        head, alpha = head[:, ::-1], alpha[:, ::-1]
    x0 = int(look.center[0] * width - ow / 2)
    y0 = int(look.center[1] * height - oh / 2)
    still = np.empty((height, width, 3), np.float32)
    still[:] = look.background
    _paste(still, head, alpha, x0, y0)
    still = np.clip(still, 0, 255).astype(np.uint8)  # [H, W, 3]

    # Head motion: a slow random sway plus a nod with the loudness, in whole pixels. The background is
    # one colour, so rolling the whole picture moves the head without visible edges.
    sway = np.cumsum(rng.normal(0, 0.3, len(loudness)))
    sway = np.round((sway - sway.mean()).clip(-4, 4) * s).astype(int)  # [T]
    nod = np.round(2 * np.asarray(loudness) * s).astype(int)  # [T]

    def to_frame(points: np.ndarray, dx: int, dy: int) -> np.ndarray:
        x = (tw - points[:, 0]) if look.flip else points[:, 0]
        xy = np.stack([x0 + dx + x * s, y0 + dy + points[:, 1] * s], axis=1)
        return np.round(xy * (1 << _SUBPIXEL)).astype(np.int32)

    frames = np.empty((len(loudness), height, width, 3), np.uint8)
    for i, level in enumerate(loudness):
        frame = frames[i]
        frame[:] = np.roll(still, (nod[i], sway[i]), axis=(0, 1))
        lips, inside = _mouth_polygons(expr, float(level))
        cv2.fillPoly(frame, [to_frame(lips, sway[i], nod[i])], (150, 70, 75), cv2.LINE_AA, _SUBPIXEL)
        cv2.fillPoly(frame, [to_frame(inside, sway[i], nod[i])], (80, 35, 40), cv2.LINE_AA, _SUBPIXEL)
    return frames


def _paste(frame: np.ndarray, img: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    """Alpha-blend `img` [h, w, 3] onto `frame` at top-left (x, y), clipped to the frame."""
    H, W = frame.shape[:2]
    h, w = img.shape[:2]
    fx0, fy0, fx1, fy1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if fx0 >= fx1 or fy0 >= fy1:
        return
    sub = (slice(fy0 - y, fy1 - y), slice(fx0 - x, fx1 - x))
    region = frame[fy0:fy1, fx0:fx1]
    region[:] = alpha[sub] * img[sub] + (1 - alpha[sub]) * region


def error_picture(width: int, height: int, n_frames: int) -> np.ndarray:
    """A still 'media unavailable' card with no face, uint8 [n_frames, height, width, 3]."""
    card = np.full((height, width, 3), 20, np.uint8)
    cv2.rectangle(card, (width // 8, height // 3), (7 * width // 8, 2 * height // 3), (200, 30, 30), -1)
    cv2.putText(
        card,
        "ERROR",
        (width // 8 + 8, height // 2 + 10),
        cv2.FONT_HERSHEY_SIMPLEX,
        max(width / 320, 0.4),
        (255, 255, 255),
        2,
        cv2.LINE_AA,
    )
    return np.repeat(card[None], n_frames, axis=0)
