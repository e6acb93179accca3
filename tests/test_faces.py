"""Faces stage: MTCNN detection on generated frames, square crops with margin, per-clip counts in
faces.h5, and a clip without any face marked not usable for the cached path (reason `no-face`)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from helpers.corpora import CLIP_FRAMES, EMOTIONS, TINY_CLIPS, astronaut_frame, make_tiny_corpus

from pipeline.compute import faces as faces_compute
from pipeline.manifest import read_manifest
from pipeline.media import decode_frames
from pipeline.stages import faces as faces_stage
from pipeline.stages.faces import FacesConfig, FacesConfigError
from pipeline.store import intermediates


@pytest.fixture(scope="module")
def detector():
    return faces_compute.make_detector(40, "cpu")


# --- pure parts ---------------------------------------------------------------------------------------


@pytest.mark.unit
def test_crop_face_is_square_centred_and_padded_outside_the_frame():
    frame = np.full((100, 200, 3), 255, np.uint8)
    crop = faces_compute.crop_face(frame, np.array([0, 0, 40, 20]), margin=0.25, size=32)
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
    # box side 40 → square side 60 centred on (20, 10): its top-left lies outside the frame (black)
    assert crop[0, 0].tolist() == [0, 0, 0]
    assert crop[-1, -1].tolist() == [255, 255, 255]


@pytest.mark.unit
def test_crop_face_box_side_mean_is_vavls_square():
    # VAVL: side = 1.1 * 1.25 * mean(width, height) around the box centre = margin 0.1875 of the mean side.
    frame = np.random.default_rng(0).integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    box = np.array([50.0, 30.0, 110.0, 70.0])  # 60 x 40: mean side 50, longer side 60
    mean_side = faces_compute.crop_face(frame, box, margin=0.1875, size=224, box_side="mean")
    square = np.array([55.0, 25.0, 105.0, 75.0])  # the same centre, 50 x 50
    np.testing.assert_array_equal(mean_side, faces_compute.crop_face(frame, square, margin=0.1875, size=224))
    assert not np.array_equal(mean_side, faces_compute.crop_face(frame, box, margin=0.1875, size=224))
    with pytest.raises(FacesConfigError, match="faces.box_side"):
        FacesConfig(box_side="min")


@pytest.mark.unit
def test_detect_best_faces_finds_the_astronaut_and_not_a_blank_frame(detector):
    frames = np.stack([astronaut_frame(), np.full((180, 240, 3), 90, np.uint8), astronaut_frame(shift=20)])
    boxes, probs = faces_compute.detect_best_faces(detector, frames, batch_size=2, min_prob=0.9)
    assert probs[0] > 0.95 and probs[2] > 0.95 and probs[1] == 0
    assert np.isnan(boxes[1]).all()
    # the face sits in the upper middle of the photo, and moves with it
    x1, y1, x2, y2 = boxes[0]
    assert 90 < (x1 + x2) / 2 < 130 and 15 < (y1 + y2) / 2 < 70
    assert boxes[2][0] - boxes[0][0] == pytest.approx(20, abs=3)


@pytest.mark.unit
def test_faces_of_frames_keeps_only_frames_with_a_face(detector):
    frames = np.stack([astronaut_frame(), np.zeros((180, 240, 3), np.uint8), astronaut_frame()])
    clip = faces_compute.faces_of_frames(
        detector, frames, crop_size=48, margin=0.2, min_prob=0.9, batch_size=32
    )
    assert clip.frames_total == 3 and clip.frames_with_face == 2
    assert clip.crops.shape == (2, 48, 48, 3) and clip.crops.dtype == np.uint8
    assert clip.frame_index.tolist() == [0, 2]


@pytest.mark.unit
def test_mtcnn_finds_the_synthetic_corpus_faces(detector):
    """The generator's talking faces (pipeline.standins.cremad.face) at the demo's 160x120, every emotion at full
    strength, mouth open: MTCNN must find them, or the demo's cached path would be empty."""
    from pipeline.standins.cremad import face

    rng = np.random.default_rng(0)
    frames = np.concatenate(
        [
            face.render_frames(
                face.random_look(rng), face.blend_expression(emotion, 1.5), np.array([1.0]), 160, 120, rng
            )
            for emotion in EMOTIONS
        ]
    )  # [6, 120, 160, 3]
    _, probs = faces_compute.detect_best_faces(detector, frames, batch_size=6, min_prob=0.9)
    assert (probs > 0.9).all(), probs


@pytest.mark.unit
def test_config_errors_name_the_key():
    with pytest.raises(FacesConfigError, match="faces.fps"):
        FacesConfig(fps=0)
    with pytest.raises(FacesConfigError, match="faces.margin"):
        FacesConfig(margin=2)


# --- the stage on generated clips ---------------------------------------------------------------------


@pytest.mark.unit
def test_decode_frames_every_frame_or_at_a_frame_rate(tmp_path):
    root, _ = make_tiny_corpus(tmp_path)
    path = root / "VideoFlash" / f"{TINY_CLIPS[0][0]}.flv"
    every = decode_frames(path)
    assert every.shape == (CLIP_FRAMES, 180, 240, 3) and every.dtype == np.uint8
    assert len(decode_frames(path, fps=10)) == 3  # t = 0, 0.1, 0.2 of 0 .. 0.267 s


@pytest.mark.integration
def test_run_faces_counts_faces_and_marks_the_no_face_clip(tmp_path):
    root, out = make_tiny_corpus(tmp_path)
    faces_path = out / "work" / "faces.h5"
    config = FacesConfig(crop_size=48, device="cpu", batch_size=4)
    summary = faces_stage.run_faces(out / "manifest.jsonl", root, faces_path, config, progress=False)
    no_face_id = TINY_CLIPS[3][0]
    assert summary["clips"] == 4 and list(summary["no_face"]) == [no_face_id]
    assert summary["frames_total"] == 4 * CLIP_FRAMES and summary["frames_with_face"] == 3 * CLIP_FRAMES

    with h5py.File(faces_path, "r") as h5:
        for clip_id, _, has_face in TINY_CLIPS:
            counts = intermediates.clip_face_counts(h5, clip_id)
            crops = intermediates.read_clip_faces(h5, clip_id)
            assert counts["frames_total"] == CLIP_FRAMES
            assert counts["frames_with_face"] == (CLIP_FRAMES if has_face else 0) == len(crops)
            assert crops.shape[1:] == (48, 48, 3) and crops.dtype == np.uint8
        # JPEG round trip keeps the crop close to a fresh one
        frame = decode_frames(root / "VideoFlash" / f"{TINY_CLIPS[0][0]}.flv")[0]
        fresh = faces_compute.crop_face(frame, h5["box"][TINY_CLIPS[0][0]][0], config.margin, 48)
        stored = intermediates.read_clip_faces(h5, TINY_CLIPS[0][0])[0]
        assert np.abs(fresh.astype(int) - stored.astype(int)).mean() < 4
    with h5py.File(faces_path, "r") as h5:
        with_faces = sorted(c for c, reason in intermediates.cached_usability(h5).items() if reason is None)
    assert with_faces == sorted(c for c, _, has_face in TINY_CLIPS if has_face)

    records = {r.id: r for r in read_manifest(out / "manifest.jsonl")}
    marked = records[no_face_id]
    assert marked.status == "ok" and marked.reason is None  # not rejected: still fine for raw
    assert marked.usable == {"raw": True, "cached": False}
    assert marked.reasons["cached"].startswith("no-face: ") and no_face_id in marked.reasons["cached"]
    for clip_id, _, _ in TINY_CLIPS[:3]:
        assert records[clip_id].usable == {"raw": True, "cached": True} and records[clip_id].reasons == {}


@pytest.mark.integration
def test_run_faces_reuses_finished_work_and_redoes_it_on_config_change(tmp_path, monkeypatch):
    root, out = make_tiny_corpus(tmp_path)
    faces_path = out / "work" / "faces.h5"
    config = FacesConfig(crop_size=32, device="cpu")
    faces_stage.run_faces(out / "manifest.jsonl", root, faces_path, config, progress=False)
    manifest_before = (out / "manifest.jsonl").read_bytes()
    faces_before = faces_path.read_bytes()

    def must_not_run(jobs, cfg):
        raise AssertionError("a finished clip was recomputed")

    monkeypatch.setattr(faces_stage, "compute_faces", must_not_run)
    again = faces_stage.run_faces(out / "manifest.jsonl", root, faces_path, config, progress=False)
    assert list(again["no_face"]) == [TINY_CLIPS[3][0]]  # a clip marked no-face stays a candidate
    assert (
        out / "manifest.jsonl"
    ).read_bytes() == manifest_before and faces_path.read_bytes() == faces_before

    monkeypatch.undo()
    faces_stage.run_faces(
        out / "manifest.jsonl", root, faces_path, FacesConfig(crop_size=40, device="cpu"), progress=False
    )
    with h5py.File(faces_path, "r") as h5:
        assert json.loads(h5.attrs["config"])["crop_size"] == 40
        assert intermediates.read_clip_faces(h5, TINY_CLIPS[0][0]).shape[1:] == (40, 40, 3)


@pytest.mark.integration
def test_undecodable_video_is_not_usable_for_cached_and_does_not_stop_the_stage(tmp_path):
    root, out = make_tiny_corpus(tmp_path)
    broken = root / "VideoFlash" / f"{TINY_CLIPS[1][0]}.flv"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated after validation
    summary = faces_stage.run_faces(
        out / "manifest.jsonl",
        root,
        out / "work" / "faces.h5",
        FacesConfig(crop_size=32, device="cpu"),
        progress=False,
    )
    assert sorted(summary["no_face"]) == sorted([TINY_CLIPS[1][0], TINY_CLIPS[3][0]])
    assert "decode-error" in summary["no_face"][TINY_CLIPS[1][0]]
    record = next(r for r in read_manifest(out / "manifest.jsonl") if r.id == TINY_CLIPS[1][0])
    assert record.usable["cached"] is False and record.reasons["cached"].startswith("no-face: ")
