"""Probing and decoding single media files (pipeline.media) on tiny media made by helpers.media."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest
from helpers.media import LFS_STUB, make_flv, make_mp4, make_wav

from pipeline.media import (
    MediaError,
    UnsafePathError,
    check_readable,
    decode_frames,
    frames_at_fps,
    probe_audio,
    probe_video,
    read_audio,
    resample,
    resized_rgb,
    resolve_inside,
)

pytestmark = pytest.mark.unit

# --- paths --------------------------------------------------------------------------------------------


def test_resolve_inside_accepts_plain_relative_paths(tmp_path):
    (tmp_path / "AudioWAV").mkdir()
    assert resolve_inside(tmp_path, "AudioWAV/a.wav") == (tmp_path / "AudioWAV" / "a.wav").resolve()


@pytest.mark.parametrize("bad", ["../outside.wav", "AudioWAV/../../x.wav", "/etc/passwd", ""])
def test_resolve_inside_refuses_escaping_paths(tmp_path, bad):
    with pytest.raises(UnsafePathError):
        resolve_inside(tmp_path / "root", bad)


def test_resolve_inside_refuses_symlink_out_of_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.wav").write_bytes(b"x")
    (root / "link.wav").symlink_to(tmp_path / "secret.wav")
    with pytest.raises(UnsafePathError, match="outside the corpus root"):
        resolve_inside(root, "link.wav")


# --- cheap checks before decoding -----------------------------------------------------------------------


def test_lfs_stub_empty_and_missing_files_get_their_reason(tmp_path):
    (tmp_path / "stub.wav").write_bytes(LFS_STUB)
    (tmp_path / "empty.flv").write_bytes(b"")
    with pytest.raises(MediaError, match="run git lfs pull") as err:
        check_readable(tmp_path / "stub.wav", "stub.wav")
    assert err.value.code == "lfs-pointer"
    with pytest.raises(MediaError) as err:
        check_readable(tmp_path / "empty.flv", "empty.flv")
    assert err.value.code == "empty-file"
    with pytest.raises(MediaError) as err:
        check_readable(tmp_path / "absent.wav", "absent.wav")
    assert err.value.code == "missing-file"


def test_lfs_stub_never_reaches_a_decoder(tmp_path):
    (tmp_path / "stub.flv").write_bytes(LFS_STUB)
    with pytest.raises(MediaError) as err:
        probe_video(tmp_path / "stub.flv", "stub.flv")
    assert err.value.code == "lfs-pointer"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    path = make_wav(tmp_path / "a.wav")
    path.chmod(0)
    with pytest.raises(MediaError) as err:
        probe_audio(path, "a.wav")
    assert err.value.code == "unreadable"


# --- probing -------------------------------------------------------------------------------------------


def test_probe_audio_facts(tmp_path):
    info = probe_audio(make_wav(tmp_path / "a.wav", seconds=0.5), "a.wav")
    assert info.as_dict() == {"sample_rate": 16000, "channels": 1, "sample_width": 2, "duration": 0.5}
    assert 0.29 < info.peak < 0.31
    stereo8 = probe_audio(make_wav(tmp_path / "b.wav", channels=2, subtype="PCM_U8"), "b.wav")
    assert (stereo8.channels, stereo8.sample_width) == (2, 1)


def test_probe_audio_garbage_is_decode_error(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF" + os.urandom(200))
    with pytest.raises(MediaError) as err:
        probe_audio(tmp_path / "bad.wav", "bad.wav")
    assert err.value.code == "decode-error"


def test_probe_video_facts(tmp_path):
    info = probe_video(make_flv(tmp_path / "a.flv", seconds=1.5, fps=10), "a.flv")
    assert (info.width, info.height, info.fps) == (64, 48, 10.0)
    assert info.has_audio and info.video_codec == "flv1" and info.audio_codec == "mp3"
    assert 1.3 < info.duration < 1.8
    silent_film = probe_video(make_flv(tmp_path / "b.flv", audio=False), "b.flv")
    assert not silent_film.has_audio and silent_film.audio_codec is None


def test_truncated_flv_is_decode_error(tmp_path):
    path = make_flv(tmp_path / "a.flv", seconds=3.0, fps=10)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 7])  # cut mid-tag, as an interrupted download
    with pytest.raises(MediaError, match="truncated") as err:
        probe_video(path, "a.flv")
    assert err.value.code == "decode-error"


def test_video_shorter_than_the_audio_is_not_truncated(tmp_path):
    """probe_video reads the video packets alone first; when they end early, the audio packets decide."""
    path = make_flv(tmp_path / "a.flv", seconds=1.0, fps=10, audio_seconds=3.0)
    with av.open(str(path)) as container:
        assert container.duration / 1e6 > 2.5  # the header announces the audio's length
    info = probe_video(path, "a.flv")
    assert 0.9 < info.duration < 1.2  # the video's own end


def test_garbage_flv_is_decode_error(tmp_path):
    (tmp_path / "bad.flv").write_bytes(os.urandom(4000))
    with pytest.raises(MediaError) as err:
        probe_video(tmp_path / "bad.flv", "bad.flv")
    assert err.value.code == "decode-error"


def test_audio_only_container_has_no_video_stream(tmp_path):
    path = tmp_path / "a.flv"
    with av.open(str(path), "w", format="flv") as container:
        stream = container.add_stream("mp3", rate=22050, layout="mono")
        chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.float32), format="flt", layout="mono")
        chunk.sample_rate, chunk.pts = 22050, 0
        container.mux(stream.encode(chunk))
        container.mux(stream.encode())
    with pytest.raises(MediaError) as err:
        probe_video(path, "a.flv")
    assert err.value.code == "no-video-stream"


# --- frames at 1 fps ---------------------------------------------------------------------------------------


def _frame_index(frame: np.ndarray) -> int:
    return round(frame.mean() / 8)


def test_frames_are_picked_by_timestamp(tmp_path):
    frames = frames_at_fps(make_flv(tmp_path / "a.flv", seconds=3.0, fps=10), count=3, fps=1.0, size=32)
    assert frames.shape == (3, 32, 32, 3) and frames.dtype == np.uint8
    assert [_frame_index(f) for f in frames] == [0, 10, 20]  # t = 0 s, 1 s, 2 s


def test_short_clip_is_padded_with_its_last_kept_frame(tmp_path):
    frames = frames_at_fps(make_flv(tmp_path / "a.flv", seconds=1.2, fps=10), count=3, fps=1.0, size=16)
    assert [_frame_index(f) for f in frames] == [0, 10, 10]
    assert np.array_equal(frames[1], frames[2])


def test_permission_denied_is_unreadable(tmp_path, monkeypatch):
    """The same check as above, also when tests run as root (where chmod 0 does not stop reads)."""
    import pipeline.media

    path = make_wav(tmp_path / "a.wav")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(pipeline.media, "open", denied, raising=False)
    with pytest.raises(MediaError, match="permissions") as err:
        check_readable(path, "a.wav")
    assert err.value.code == "unreadable"


def test_keyframe_jumps_give_the_same_pictures_as_decoding_everything(tmp_path):
    """frames_at_fps skips to the keyframe before each kept frame; with moving texture, a frame decoded
    without its references would differ from the one a full decode gives."""
    path = tmp_path / "moving.flv"
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (48, 96, 3), np.uint8)
    with av.open(str(path), "w", format="flv") as container:
        video = container.add_stream("flv", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.gop_size = 7  # keyframes at 0, 0.7, 1.4, 2.1 s
        for i in range(35):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[:, i : i + 64]), format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode())
    with av.open(str(path)) as container:
        everything = {f.pts: resized_rgb(f, 24) for f in container.decode(video=0)}
    picked = frames_at_fps(path, count=3, fps=1.0, size=24)
    start = min(everything)
    for k in range(3):
        expected = everything[min(p for p in everything if p - start >= 1000 * k)]
        assert np.array_equal(picked[k], expected)


def test_resized_rgb_is_as_close_to_the_area_average_as_scaling_into_rgb24():
    """resized_rgb scales into RGBA (faster): no further from OpenCV's exact area average than swscale's
    scaling into RGB24, on a CREMA-D-sized picture (480x360 -> 224x224)."""
    import cv2

    y, x = np.mgrid[0:360, 0:480]
    picture = np.stack([x * 255 / 479, y * 255 / 359, 127 + 100 * np.sin(x / 9.0) * np.cos(y / 7.0)], axis=-1)
    frame = av.VideoFrame.from_ndarray(picture.astype(np.uint8), format="rgb24").reformat(format="yuv420p")
    exact = cv2.resize(
        frame.to_ndarray(format="rgb24").astype(np.float32), (224, 224), interpolation=cv2.INTER_AREA
    )  # [224, 224, 3]
    rgb24 = frame.to_ndarray(format="rgb24", width=224, height=224, interpolation="AREA")
    ours = resized_rgb(frame, 224)
    assert ours.shape == (224, 224, 3) and ours.dtype == np.uint8
    assert np.abs(ours - exact).mean() <= np.abs(rgb24 - exact).mean() + 0.1 < 3


def test_resolve_inside_follows_the_working_folder_for_a_relative_root(tmp_path, monkeypatch):
    """The resolved root is cached per process; a relative root must still mean the current folder."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        assert resolve_inside(".", "x.wav") == (tmp_path / name / "x.wav").resolve()


# --- audio inside a container, segments, the one resampler ------------------------------------------------


def test_audio_of_a_container_is_probed_and_read_like_a_sound_file(tmp_path):
    path = make_mp4(tmp_path / "a.mp4", seconds=2.0)
    info = probe_audio(path, "a.mp4")
    assert (info.sample_rate, info.channels, info.sample_width) == (16000, 1, 0)
    assert abs(info.duration - 2.0) < 0.15 and 0.5 < info.peak <= 1.0  # + AAC's encoder delay
    samples, rate = read_audio(path)
    assert rate == 16000 and samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) / rate - 2.0) < 0.15
    assert probe_video(path, "a.mp4").has_audio


def test_a_container_without_audio_has_no_audio_stream(tmp_path):
    path = make_mp4(tmp_path / "silent.mp4", audio=False)
    with pytest.raises(MediaError) as err:
        probe_audio(path, "silent.mp4")
    assert err.value.code == "no-audio-stream" and "silent.mp4" in str(err.value)


def test_read_audio_honours_the_segment(tmp_path):
    """The tone grows louder with time: the second half of the clip is louder than the first."""
    path = make_mp4(tmp_path / "a.mp4", seconds=2.0)
    whole, rate = read_audio(path)
    first, _ = read_audio(path, (0.0, 1.0))
    second, _ = read_audio(path, (1.0, 1.0))
    assert len(first) == len(second) == rate
    assert np.array_equal(second, whole[rate : 2 * rate])
    assert np.abs(second).max() > 1.5 * np.abs(first).max()
    wav = make_wav(tmp_path / "a.wav", seconds=1.0)
    assert len(read_audio(wav, (0.25, 0.5))[0]) == 8000


def test_frames_and_decoded_frames_come_from_inside_the_segment(tmp_path):
    path = make_mp4(tmp_path / "a.mp4", seconds=3.0, fps=10)
    picked = frames_at_fps(path, count=3, fps=1.0, size=16, segment=(1.0, 1.5))
    assert [_frame_index(f) for f in picked] == [10, 20, 20]  # t = 1 s, 2 s, then padded: 3 s is past the end
    every = decode_frames(path, None, segment=(1.0, 0.5))
    assert [_frame_index(f) for f in every] == [10, 11, 12, 13, 14]
    assert [_frame_index(f) for f in decode_frames(path, 2.0, segment=(0.5, 1.0))] == [5, 10]


def test_resample_is_the_identity_at_the_same_rate_and_keeps_a_tone(tmp_path):
    t = np.arange(16000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    assert resample(tone, 16000, 16000) is tone
    up = resample(tone, 16000, 22050)
    assert up.dtype == np.float32 and len(up) == 22050
    assert abs(int(np.abs(np.fft.rfft(up)).argmax()) - 1000) <= 1
