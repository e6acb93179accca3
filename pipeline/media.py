"""Probe and decode media files: WAV (and other sound files) through soundfile, video containers (FLV, MP4,
AVI, ...) and their audio streams through PyAV.

Everything here works on one file and knows nothing about corpora. Probing never trusts a file: a Git LFS
pointer stub, an empty file, an unreadable file or a truncated stream each raise `MediaError` with a
`Reason` code (pipeline.manifest), so the corpus validator can reject the clip with a reason.

Reading honours a segment (start, duration in seconds): frames and audio come from inside it only.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from pipeline.manifest import Reason

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
# A truncated FLV keeps the duration of its header; the packets end early. Tolerate this much.
TRUNCATION_TOLERANCE_S = 0.3


class MediaError(Exception):
    """A media file that cannot be used; `code` says why (the manifest's reason code)."""

    def __init__(self, code: Reason, message: str):
        super().__init__(code.says(message))
        self.code = code
        self.message = message

    @property
    def reason(self) -> str:
        return self.code.says(self.message)


class UnsafePathError(ValueError):
    """A manifest path that would leave the corpus root."""


@functools.lru_cache(maxsize=16)
def _resolved_root(root: str) -> Path:
    """The corpus root with its symlinks resolved, once per process (it is joined to every clip's path)."""
    return Path(root).resolve()


def resolve_inside(root: str | os.PathLike, relative: str) -> Path:
    """Join a manifest path (POSIX, relative) to the corpus root, refusing any path that escapes it.

    Absolute paths, `..` components and symlinks that point outside the root are all refused.
    """
    rel = PurePosixPath(relative)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise UnsafePathError(f"media path {relative!r} is not a plain relative path inside the corpus root")
    root_resolved = _resolved_root(os.path.abspath(root))  # absolute: a later chdir cannot fool the cache
    path = (root_resolved / Path(*rel.parts)).resolve()
    if not path.is_relative_to(root_resolved):
        raise UnsafePathError(
            f"media path {relative!r} resolves to {path}, outside the corpus root {root_resolved}"
        )
    return path


def check_readable(path: Path, relative: str) -> None:
    """Raise MediaError for the problems that make a file useless before any decoder sees it:
    missing, unreadable (permissions), empty, or a Git LFS pointer stub."""
    if not path.is_file():
        raise MediaError(Reason.MISSING_FILE, f"{relative} does not exist")
    try:
        with open(path, "rb") as f:
            head = f.read(len(LFS_POINTER_PREFIX))
    except PermissionError as err:
        raise MediaError(
            Reason.UNREADABLE, f"{relative} cannot be opened ({err.strerror}); check its permissions"
        ) from err
    except OSError as err:
        raise MediaError(Reason.UNREADABLE, f"{relative} cannot be read ({err})") from err
    if len(head) == 0:
        raise MediaError(Reason.EMPTY_FILE, f"{relative} is empty (0 bytes)")
    if head == LFS_POINTER_PREFIX:
        raise MediaError(Reason.LFS_POINTER, f"{relative} is a Git LFS pointer stub; run git lfs pull")


_SAMPLE_WIDTH = {"PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}
SOUND_FILE_SUFFIXES = (".wav", ".flac", ".ogg")  # read with soundfile; anything else is a container's audio


def is_sound_file(path: str | os.PathLike) -> bool:
    """A file of sound alone (read with soundfile), as opposed to a container whose audio stream is used."""
    return Path(path).suffix.lower() in SOUND_FILE_SUFFIXES


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    sample_width: int  # bytes per sample; 0 when the encoding is not PCM/float (a container's AAC, MP3, ...)
    duration: float  # seconds
    peak: float  # max |sample| in [0, 1]: a silent file has 0

    def as_dict(self) -> dict:
        return {
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "sample_width": self.sample_width,
            "duration": round(self.duration, 4),
        }


def probe_audio(path: Path, relative: str) -> AudioInfo:
    """Probe a sound file, or the first audio stream of a container, reading every sample once (clips are
    short) to measure the duration and the peak level."""
    check_readable(path, relative)
    if is_sound_file(path):
        return _probe_sound_file(path, relative)
    samples, sample_rate, channels = _decode_audio_stream(path, relative)  # [C, N]
    return AudioInfo(
        sample_rate=sample_rate,
        channels=channels,
        sample_width=0,
        duration=samples.shape[1] / sample_rate if sample_rate else 0.0,
        peak=float(np.abs(samples).max()) if samples.size else 0.0,
    )


def _probe_sound_file(path: Path, relative: str) -> AudioInfo:
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as f:
            sample_rate, channels, subtype = f.samplerate, f.channels, f.subtype
            samples = f.read(dtype="float32", always_2d=True)  # [N, C]
    except Exception as err:  # soundfile raises RuntimeError/LibsndfileError for corrupt data
        kind = path.suffix[1:].upper() or "sound"
        raise MediaError(Reason.DECODE_ERROR, f"{relative} cannot be decoded as {kind} ({err})") from err
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    return AudioInfo(
        sample_rate=int(sample_rate),
        channels=int(channels),
        sample_width=_SAMPLE_WIDTH.get(subtype, 0),
        duration=samples.shape[0] / sample_rate if sample_rate else 0.0,
        peak=peak,
    )


def _decode_audio_stream(path: Path, relative: str) -> tuple[np.ndarray, int, int]:
    """Every sample of a container's first audio stream: (float32 [C, N] in [-1, 1], sample rate, C)."""
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise MediaError(Reason.NO_AUDIO_STREAM, f"{relative} has no audio stream")
            stream = container.streams.audio[0]
            channels = stream.codec_context.channels
            # planar float at the stream's own rate and layout: no resampling here (see `resample`)
            resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=stream.rate)
            chunks, first_pts = [], None
            for frame in container.decode(stream):
                if first_pts is None and frame.pts is not None:
                    first_pts = frame.pts * float(frame.time_base)  # seconds; < 0 for an edit list's priming
                chunks += [f.to_ndarray() for f in resampler.resample(frame)]  # [C, n] each
            chunks += [f.to_ndarray() for f in resampler.resample(None)]
            sample_rate = int(stream.rate)
    except MediaError:
        raise
    except Exception as err:  # PyAV raises its FFmpegError subclasses, ValueError, ...
        raise MediaError(
            Reason.DECODE_ERROR, f"{relative}: its audio stream cannot be decoded ({err})"
        ) from err
    samples = np.concatenate(chunks, axis=1) if chunks else np.zeros((channels, 0), np.float32)  # [C, N]
    if first_pts is not None and first_pts < 0:  # samples before time 0 (encoder priming) are not the clip's
        samples = samples[:, round(-first_pts * sample_rate) :]
    return samples.astype(np.float32, copy=False), sample_rate, channels


def read_audio(
    path: Path, segment: tuple[float, float] | None = None, *, channel: str = "mean"
) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] of a sound file, or of a container's first audio stream, cut to
    `segment` = (start, duration) in seconds when given: ([N], sample_rate). Of several channels, their mean
    (`channel="mean"`) or the first (`"first"`); a mono file is returned as it is."""
    if is_sound_file(path):
        import soundfile as sf

        samples, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)  # [N, C]
        samples = samples.T  # [C, N]
    else:
        samples, sample_rate, _ = _decode_audio_stream(path, path.name)  # [C, N]
    if segment is not None:
        start = round(segment[0] * sample_rate)
        samples = samples[:, start : start + round(segment[1] * sample_rate)]  # [C, n]
    mono = samples[0] if samples.shape[0] == 1 or channel == "first" else samples.mean(axis=0)  # [N]
    return np.ascontiguousarray(mono), int(sample_rate)


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """[N] float32 at `rate` -> [N * target / rate] at `target`: libsoxr's high-quality band-limited
    resampler (what librosa.load, which the MLB authors' code calls, uses by default). The one resampler
    of both input paths."""
    if rate == target:
        return samples
    import soxr

    return soxr.resample(samples, rate, target, quality="HQ").astype(np.float32, copy=False)


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    duration: float  # seconds, measured from the video packets (not the header)
    has_audio: bool
    video_codec: str
    audio_codec: str | None

    def as_dict(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "fps": round(self.fps, 4),
            "duration": round(self.duration, 4),
            "has_audio": self.has_audio,
            "video_codec": self.video_codec,
            "audio_codec": self.audio_codec,
        }


def _latest_stream_end(path: Path, relative: str) -> float:
    """Seconds at which the last packet of any stream of a media file ends (every packet read)."""
    import av

    ends = []
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            for packet in container.demux():
                if packet.pts is not None and packet.size > 0:
                    ends.append((packet.pts + (packet.duration or 0)) * float(packet.time_base))
    except Exception as err:
        raise MediaError(Reason.DECODE_ERROR, f"{relative}: reading the stream failed ({err})") from err
    return max(ends, default=0.0)


def probe_video(path: Path, relative: str) -> VideoInfo:
    """Open a container with PyAV, read every video packet (cheap: no decoding) to measure the real stream
    end, and decode the first video frame (at reduced size where the decoder can) to prove it decodes.

    Only the video stream is read at first: demuxing the audio packets too (MP3 in CREMA-D's FLVs) costs
    more than the video ones. When the video ends well before the duration the header announces, every
    stream is read again: the file is truncated only if all of them end early.

    Raises MediaError: `no-video-stream`, `zero-duration` (no packet), `decode-error` (cannot open, cannot
    decode, or truncated: the packets end well before the duration the header announces, or number well
    under the frame count the stream header announces); and those of `check_readable`.
    """
    import av

    check_readable(path, relative)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.EOFError as err:  # a valid header and then nothing: streams declared, not one packet
        raise MediaError(
            Reason.ZERO_DURATION, f"{relative} ends before its first media packet (no duration)"
        ) from err
    except Exception as err:
        raise MediaError(
            Reason.DECODE_ERROR, f"{relative} cannot be opened as a media container ({err})"
        ) from err
    with container:
        if not container.streams.video:
            raise MediaError(Reason.NO_VIDEO_STREAM, f"{relative} has no video stream")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        header_duration = container.duration / 1e6 if container.duration else None
        width, height = video.codec_context.width, video.codec_context.height  # before lowres shrinks them
        # The first picture is decoded only to prove the bitstream decodes: at 1/8 size (`lowres`, for the
        # decoders that offer it, FLV's H.263 among them; the others ignore it) it costs ~40% less.
        video.codec_context.options = {"lowres": "3"}
        video_end_pts, decoded_one, packets = 0, False, 0
        # the frame count of the stream header (AVI, MP4); 0 where there is none (FLV)
        announced = video.frames
        try:
            for packet in container.demux(video):  # plain ints per packet: this loop runs for every clip
                pts = packet.pts
                if pts is None or packet.size == 0:
                    continue
                packets += 1
                end = pts + (packet.duration or 0)
                video_end_pts = max(video_end_pts, end)
                if not decoded_one:  # prove the codec works on the first picture
                    decoded_one = bool(video.codec_context.decode(packet))
        except Exception as err:
            raise MediaError(Reason.DECODE_ERROR, f"{relative}: reading the stream failed ({err})") from err
        video_end = video_end_pts * float(video.time_base)  # seconds
        if video_end <= 0:
            raise MediaError(Reason.ZERO_DURATION, f"{relative} has no video packets (no duration)")
        if not decoded_one:  # a decoder with delay may hold its first picture until flushed
            try:
                decoded_one = bool(video.codec_context.decode(None))
            except Exception:  # noqa: BLE001 (any failure here means the same: undecodable)
                decoded_one = False
        if not decoded_one:
            raise MediaError(Reason.DECODE_ERROR, f"{relative}: no video frame could be decoded")

        def ends_early(end: float) -> bool:
            return header_duration is not None and header_duration - end > max(
                TRUNCATION_TOLERANCE_S, 0.1 * header_duration
            )

        any_end = video_end
        if ends_early(video_end):  # rare: see whether another stream reaches the announced end
            any_end = max(video_end, _latest_stream_end(path, relative))
        if ends_early(any_end):
            raise MediaError(
                Reason.DECODE_ERROR,
                f"{relative} is truncated: its header says {header_duration:.2f} s but the stream ends at "
                f"{any_end:.2f} s",
            )
        fps = float(video.average_rate) if video.average_rate else 0.0
        # An AVI that lost its end (and its index) gets its duration recomputed from what is left, so the
        # header duration cannot show the cut; the frame count its stream header announces still does.
        if announced > 0 and announced - packets > max(TRUNCATION_TOLERANCE_S * fps, 0.1 * announced):
            raise MediaError(
                Reason.DECODE_ERROR,
                f"{relative} is truncated: its stream header announces {announced} video frames but it holds "
                f"{packets}",
            )
        # canonical names ("flv1", "mp3"), not decoder names ("flv", "mp3float")
        video_codec = video.codec_context.codec.canonical_name
        audio_codec = audio.codec_context.codec.canonical_name if audio is not None else None
    return VideoInfo(width, height, fps, video_end, audio is not None, video_codec, audio_codec)


@functools.cache
def _reformatter():
    """One scaler per process: it keeps its swscale context between frames of the same size (building
    one per frame cost about 1 ms, more than decoding the frame)."""
    from av.video.reformatter import VideoReformatter

    return VideoReformatter()


def resized_rgb(frame, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """A decoded av.VideoFrame resized to size x size (aspect not kept, as the ResNet path expects) with
    area interpolation: uint8 [size, size, 3] RGB, written into `out` when given (C-contiguous).

    swscale scales into RGBA: its SIMD path, ~1.5x faster than scaling into RGB24 (which has none), and
    within about one grey level of the exact area average, as RGB24 is. OpenCV then drops the alpha
    channel (microseconds)."""
    rgba = _reformatter().reformat(frame, width=size, height=size, format="rgba", interpolation="AREA")
    cv2 = _opencv()
    return cv2.cvtColor(rgba.to_ndarray(), cv2.COLOR_RGBA2RGB, dst=out)  # [size, size, 4] -> [size, size, 3]


@functools.cache
def _opencv():
    """OpenCV, set to one thread for this process: waking its pool costs more than the microseconds of
    work per frame, and each pipeline process is meant to use one core."""
    import cv2

    cv2.setNumThreads(1)
    return cv2


def frames_at_fps(
    path: Path, *, count: int, fps: float, size: int, segment: tuple[float, float] | None = None
) -> np.ndarray:
    """Keep `count` frames of a video at `fps` frames per second, chosen by timestamp, decoding as little
    as possible.

    Frame k is the first frame whose time is at or after t0 + k / fps seconds from the stream's start,
    where t0 is the start of `segment` = (start, duration) (0 without one); with a segment, only frames
    before its end count. The
    packets are read once (cheap, no decoding); for each kept frame, decoding starts at the last keyframe
    before it (or carries on from the previous kept frame when that is closer) and stops at it: the same
    pictures as decoding the whole clip, for a fraction of the work. A clip too short for `count` frames
    is padded by repeating its last kept frame (deterministic). Frames are resized by `resized_rgb`.

    Returns uint8 [count, size, size, 3] (RGB).
    """
    import av

    with av.open(str(path), metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.pts is not None and p.size > 0]
        if not packets:
            raise MediaError(Reason.DECODE_ERROR, f"{path.name}: no video packet")
        packet_pts = [p.pts for p in packets]  # read once: each attribute access goes through PyAV
        keyframes = [i for i, p in enumerate(packets) if p.is_keyframe]
        start = min(packet_pts)
        time_base = float(stream.time_base)

        # the pts of each kept frame: the first one at or after t0 + k / fps (presentation order)
        all_pts = sorted(set(packet_pts))
        t0, t_end = (0.0, float("inf")) if segment is None else (segment[0], segment[0] + segment[1])
        wanted: list[int] = []
        for k in range(count):
            later = next((pts for pts in all_pts if (pts - start) * time_base + 1e-6 >= t0 + k / fps), None)
            if later is None or (later - start) * time_base + 1e-6 >= t_end:
                break  # clip (or segment) too short: padded below
            wanted.append(later)

        # each kept picture is resized straight into a slot of one array (no copy per frame)
        pictures = np.empty((max(len(wanted), 1), size, size, 3), np.uint8)  # [slots, size, size, 3]
        found: dict[int, int] = {}  # pts -> slot

        def keep(frame) -> None:
            slot = found[frame.pts] = len(found)
            resized_rgb(frame, size, out=pictures[slot])

        decoder = stream.codec_context
        position = 0  # index of the next packet to feed the decoder
        for pts in wanted:
            if pts in found:
                continue
            target = packet_pts.index(pts)
            keyframe = max((i for i in keyframes if i <= target), default=0)
            if keyframe > position:  # jump ahead: restart the decoder at the keyframe
                decoder.flush_buffers()
                position = keyframe
            while pts not in found and position < len(packets):
                for frame in decoder.decode(packets[position]):
                    if frame.pts in wanted and frame.pts not in found:
                        keep(frame)
                position += 1
            if pts not in found:  # frames still inside the decoder at the end of the stream
                for frame in decoder.decode(None):
                    if frame.pts in wanted and frame.pts not in found:
                        keep(frame)
    slots = [found[pts] for pts in wanted if pts in found]
    if not slots:
        raise MediaError(Reason.DECODE_ERROR, f"{path.name}: no video frame could be decoded")
    slots += [slots[-1]] * (count - len(slots))  # a short clip repeats its last kept frame
    return pictures if slots == list(range(len(pictures))) else pictures[slots]  # [count, size, size, 3]


def decode_frames(
    path: str | Path, fps: float | None = None, segment: tuple[float, float] | None = None
) -> np.ndarray:
    """Decode a video with PyAV at full size: every frame (fps=None) or the first frame at or after each
    t0 + k / fps seconds, t0 the start of `segment` = (start, duration) (0 without one; with a segment,
    frames outside it are dropped). Returns uint8 [N, H, W, 3] RGB (N may be 0 for a stream that decodes to
    nothing). For the few frames of the ResNet path, `frames_at_fps` decodes far less."""
    import av

    frames: list[np.ndarray] = []
    t0, t_end = (0.0, float("inf")) if segment is None else (segment[0], segment[0] + segment[1])
    next_time = t0
    with av.open(str(path), metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"  # one core per worker: frame threads only add latency
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        for frame in container.decode(stream):
            if fps is not None or segment is not None:
                if frame.pts is None:
                    continue
                t = float(frame.pts * frame.time_base) - start
                if t + 1e-6 >= t_end:
                    break
                if t + 1e-6 < next_time:
                    continue
                if fps is not None:
                    next_time += 1.0 / fps
            frames.append(frame.to_ndarray(format="rgb24"))  # [H, W, 3]
    if not frames:
        return np.zeros((0, 0, 0, 3), np.uint8)
    return np.stack(frames)  # [N, H, W, 3]
