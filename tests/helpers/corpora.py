"""A tiny corpus in the CREMA-D layout for the faces and features stages: four clips (FLV + 16 kHz WAV),
three showing a real face (the astronaut photo, which MTCNN finds) and one without any, and the contract
manifest for them, written without the index stage."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from skimage import data as skdata

from mlb.common.atomic import atomic_write_json
from pipeline.corpora import get_corpus
from pipeline.manifest import ClipRecord, corpus_description_path, write_manifest
from pipeline.stages.index import corpus_description

CLIP_FRAMES, CLIP_FPS, CLIP_SECONDS = 9, 30, 0.4
# (clip id, split, has a face): one face clip per split plus one without any face
TINY_CLIPS = [
    ("1001_DFA_ANG_XX", "train", True),
    ("1001_IEO_HAP_HI", "train", True),
    ("1002_DFA_SAD_XX", "test", True),
    ("1003_TIE_NEU_XX", "validation", False),
]
EMOTIONS = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]


def astronaut_frame(width: int = 240, height: int = 180, shift: int = 0) -> np.ndarray:
    """The astronaut photo (a real face MTCNN finds) scaled into a grey frame, uint8 [H, W, 3]."""
    frame = np.full((height, width, 3), 90, np.uint8)
    photo = cv2.resize(skdata.astronaut(), (height, height), interpolation=cv2.INTER_AREA)  # [H, H, 3]
    left = (width - height) // 2 + shift
    frame[:, left : left + height] = photo
    return frame


def make_tiny_corpus(tmp_path: Path) -> tuple[Path, Path]:
    """A 4-clip corpus in the CREMA-D layout (FLV + 16 kHz WAV) and a contract manifest (with its corpus.json)
    for it, without the index stage: returns (corpus root, OUT folder holding manifest.jsonl)."""
    from pipeline.standins.cremad.media import write_flv, write_wav

    root, out = tmp_path / "corpus", tmp_path / "out"
    (root / "AudioWAV").mkdir(parents=True)
    (root / "VideoFlash").mkdir(parents=True)
    out.mkdir()
    rng = np.random.default_rng(0)
    records = []
    for k, (clip_id, split, has_face) in enumerate(TINY_CLIPS):
        if has_face:
            frames = np.stack([astronaut_frame(shift=2 * i - 8 + 6 * k) for i in range(CLIP_FRAMES)])
        else:
            frames = np.full((CLIP_FRAMES, 180, 240, 3), 30, np.uint8)
            frames[:, 60:120, 30:210] = (200, 30, 30)  # an error card: no face anywhere
        t = np.arange(int(CLIP_SECONDS * 16000)) / 16000
        voice = 0.3 * np.sin(2 * np.pi * (150 + 40 * k) * t) + 0.01 * rng.standard_normal(t.size)
        write_flv(root / "VideoFlash" / f"{clip_id}.flv", frames, voice.astype(np.float32), fps=CLIP_FPS)
        write_wav(root / "AudioWAV" / f"{clip_id}.wav", voice.astype(np.float32))
        actor, sentence, emotion, level = clip_id.split("_")
        records.append(
            ClipRecord(
                id=clip_id,
                corpus="cremad",
                label=EMOTIONS.index(emotion),
                label_name=emotion,
                group=actor,
                media={"audio": f"AudioWAV/{clip_id}.wav", "video": f"VideoFlash/{clip_id}.flv"},
                probe={
                    "audio": {
                        "sample_rate": 16000,
                        "channels": 1,
                        "sample_width": 2,
                        "duration": CLIP_SECONDS,
                    },
                    "video": {
                        "width": 240,
                        "height": 180,
                        "fps": 30.0,
                        "duration": CLIP_FRAMES / CLIP_FPS,
                        "has_audio": True,
                        "video_codec": "flv1",
                        "audio_codec": "mp3",
                    },
                },
                protocol="vavl-1",
                split=split,
                extra={"actor": int(actor), "sentence": sentence, "level": level},
            )
        )
    write_manifest(records, out / "manifest.jsonl")
    corpus = corpus_description(get_corpus("cremad"), "vavl-1", root)
    atomic_write_json(corpus_description_path(out / "manifest.jsonl"), corpus, sort_keys=True)
    return root, out
