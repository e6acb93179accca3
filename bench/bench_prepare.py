"""Benchmark: prepare the same N synthetic clips of a corpus three ways; print clips/s and peak memory.

    .venv/bin/python bench/bench_prepare.py --clips 160 640 [--repeat 5] [--work /tmp/mlbpipe-bench]
    .venv/bin/python bench/bench_prepare.py --corpus ave --clips 28 112 --repeat 3 --methods ours-1 decode-only ours-1-after-index ours-2
    .venv/bin/python bench/bench_prepare.py --corpus ucf101 --clips 204 408 --repeat 3 --methods ours-1 decode-only ours-1-after-index ours-2
    .venv/bin/python bench/bench_prepare.py --clips 160 --repeat 3 --methods ours-1 ours-2 ray-2   # the engines

(a) ours: `mlbpipe prepare CORPUS` (index + validate, frames, spectrograms, shards) with 1 and 2 workers,
    with the corpus's own settings (AVE and UCF101: their authors', 224 px frames);
(b) baseline (CREMA-D only), the way public research code does it: one clip after another, OpenCV reads
    every frame and keeps one per second as a JPEG file, the WAV is resampled and turned into a log STFT
    in plain numpy and saved as one .npy per clip;
(c) decode-only through PyAV: every video frame of every video file decoded (no conversion) and every
    audio read (CREMA-D: the WAVs; AVE, UCF101: the container's own audio stream, decoded with its video):
    the floor no pipeline can beat on one core;
(d) ours-1-after-index: ours with 1 worker, the index stage (validation of every file) run before the clock
    starts: what the frames, spectrograms and shards stages cost by themselves (not a goal; it shows
    how much of the gap to decode-only is validation);
(e) ray-2: ours on the Ray engine (`--engine ray`, pipeline.engine.ray_executor; needs the `ray` extra), a
    local Ray instance of 2 CPUs started inside the clock like the local pool (its start is also printed
    apart). With ours-1 and ours-2 in --methods, the throughput of each engine is printed as a ratio
    against ours-1 (local, 1 worker).
Goals: (a, 2 workers) >= 3x (b); (a, 1 worker) within 1.5x of (c); peak memory flat in N
(4x the clips, <= 1.2x the memory).

Each measurement runs in a fresh process; --repeat rounds each run every way once, in turn, and the
figures are medians, the ratios medians of within-round ratios (the machine is shared: noise hits a
whole round alike). The clock starts after the libraries are imported (import time is printed apart).
CPU time (user + system; not for ours-2, whose workers the fork server starts) is printed beside wall
time: it does not count the time a process waited for a core. Peak memory is the largest resident set
of that process or of any worker it started (ru_maxrss). Ours also validates every clip (index), which
the others do not. The corpus is generated once (`mlbpipe synth CORPUS`, no defects: CREMA-D 480x360 at
30 fps and UCF101 320x240 at 25 fps as the real ones, AVE 640x360 at 25 fps, 10 s videos) and cached under
--work. N is rounded to what the stand-in can make (AVE: 28 categories x N/28 videos; UCF101: 51 classes x
1 clip x N/51 groups, at least 4 groups).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The pairs compared by a ratio run next to each other in every round (ours-1 and decode-only, ours-2 and
# baseline), each pair in alternate order from round to round: a drift of the shared machine within a
# round then hits both sides of a ratio alike.
METHODS = ("ours-1", "decode-only", "ours-1-after-index", "ours-2", "baseline", "ray-2")


# --- the three ways (each runs in its own process: `bench_prepare.py _run METHOD ROOT OUT`) --------------


RESNET_PATH = ["index", "frames", "spectrograms", "shards_raw"]


PARAMS = {"cremad": {"index": {"protocol": "speaker-random"}}}  # CREMA-D's default protocol needs VAVL's list


def run_ours(
    name: str, root: Path, out: Path, workers: int, stages: list[str] = RESNET_PATH, engine: str = "local"
) -> float:
    """Prepare with the given engine; returns the seconds its executor took to start."""
    from pipeline.corpora import get_corpus
    from pipeline.engine import LocalExecutor
    from pipeline.prepare import Run, prepare, prepare_config

    corpus = get_corpus(name)
    config = prepare_config(corpus, PARAMS.get(name, {}), {})
    start = time.perf_counter()
    if engine == "ray":
        from pipeline.engine import RayExecutor

        executor = RayExecutor(workers)
    else:
        executor = LocalExecutor(workers)
    started = time.perf_counter() - start
    with executor:
        prepare(Run(corpus, root, out, config, executor, progress=False), stages)
    return started


def run_baseline(root: Path, out: Path) -> None:
    import cv2
    import numpy as np
    import soundfile as sf

    cv2.setNumThreads(1)
    for wav in sorted((root / "AudioWAV").glob("*.wav")):
        clip_id = wav.stem
        # video: read every frame, keep one per second, one JPEG per kept frame
        frame_dir = out / "frames" / clip_id
        frame_dir.mkdir(parents=True, exist_ok=True)
        capture = cv2.VideoCapture(str(root / "VideoFlash" / f"{clip_id}.flv"))
        fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index % round(fps) == 0:
                frame = cv2.resize(frame, (224, 224))
                cv2.imwrite(str(frame_dir / f"frame_{index // round(fps):05d}.jpg"), frame)
            index += 1
        capture.release()
        # audio: resample to 22.05 kHz (linear), loop to 3 s, log STFT 512 / 353, one file per clip
        samples, rate = sf.read(str(wav), dtype="float32")
        t = np.arange(int(len(samples) * 22050 / rate)) * rate / 22050
        samples = np.interp(t, np.arange(len(samples)), samples)
        samples = np.tile(samples, int(np.ceil(66150 / len(samples))))[:66150]
        padded = np.pad(samples, 256)
        window = np.hanning(512)
        frames = np.stack([padded[i * 353 : i * 353 + 512] * window for i in range(188)], axis=1)
        spectrogram = np.log(np.abs(np.fft.rfft(frames, axis=0)) + 1e-7)
        (out / "audio").mkdir(parents=True, exist_ok=True)
        np.save(out / "audio" / f"{clip_id}.npy", spectrogram)


VIDEO_FILES = {"cremad": "VideoFlash/*.flv", "ave": "AVE/*.mp4", "ucf101": "UCF-101/*/*.avi"}


def run_decode_only(name: str, root: Path) -> None:
    import av
    import soundfile as sf

    for video in sorted(root.glob(VIDEO_FILES[name])):
        with av.open(str(video)) as container:
            streams = {"video": 0} if name == "cremad" else {"video": 0, "audio": 0}
            for _ in container.decode(**streams):
                pass
        if name == "cremad":  # its sound is a WAV of its own
            sf.read(str(root / "AudioWAV" / f"{video.stem}.wav"), dtype="float32")


STARTUP_IMPORTS = {  # imported before the clock starts; their cost is reported apart as start-up
    "ours": (
        "av",
        "cv2",
        "h5py",
        "soundfile",
        "soxr",
        "scipy.fft",
        "scipy.signal",  # the psd kind's; 2-3 s to import
        "tqdm",
        "pipeline.prepare",
        "pipeline.stages.index",
        "pipeline.stages.frames",
        "pipeline.stages.spectrograms",
        "pipeline.stages.shards_raw",
    ),
    "baseline": ("cv2", "numpy", "soundfile"),
    "decode-only": ("av", "soundfile"),
}
STARTUP_IMPORTS["ray"] = (*STARTUP_IMPORTS["ours"], "ray")


def _run(name: str, method: str, root: Path, out: Path) -> None:
    import importlib

    os.environ["OMP_NUM_THREADS"] = "1"
    begin = time.perf_counter()
    kind = method.split("-")[0] if method.startswith(("ours", "ray")) else method
    if kind == "ray":  # a one-machine Ray instance binds loopback only (read by ray at import)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for module in STARTUP_IMPORTS[kind] + ((f"pipeline.corpora.{name}",) if kind in ("ours", "ray") else ()):
        importlib.import_module(module)
    if method == "ours-1-after-index":
        run_ours(name, root, out, 1, ["index"])
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    engine_start = 0.0
    if method == "ours-1-after-index":
        engine_start = run_ours(name, root, out, 1, RESNET_PATH[1:])
    elif method.startswith("ours-"):
        engine_start = run_ours(name, root, out, int(method.split("-")[1]))
    elif method.startswith("ray-"):
        engine_start = run_ours(name, root, out, int(method.split("-")[1]), engine="ray")
    elif method == "baseline":
        run_baseline(root, out)
    else:
        run_decode_only(name, root)
    seconds = time.perf_counter() - start
    cpu_seconds = _cpu_seconds() - cpu_start
    peak_kib = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "startup": start - begin,
                "engine_start": engine_start,
                "peak_mib": peak_kib / 1024,
                "torch_imported": "torch" in sys.modules,
            }
        )
    )


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and of the workers it waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# --- the driver -------------------------------------------------------------------------------------------


DEFAULT_SIZES = {"cremad": "480x360", "ave": "640x360", "ucf101": "320x240"}


def synth_options(name: str, clips: int) -> tuple[dict, int]:
    """The stand-in's options for about `clips` clean clips, and the number it makes."""
    if name == "ave":
        per_category = max(1, round(clips / 28))
        return {"videos_per_category": per_category}, 28 * per_category
    if name == "ucf101":  # the 51 classes with sound, none of UCF50's (they would only be rejected)
        groups = max(4, round(clips / 51))  # the stand-in makes at least 4 groups per class
        return {"classes": 51, "ucf50_classes": 0, "groups": groups, "clips_per_group": 1}, 51 * groups
    return {"clips": clips}, clips


def make_corpus(work: Path, name: str, clips: int, size: str) -> Path:
    """A cached synthetic corpus of `clips` good clips (no defects: every way gets the same clean input)."""
    root = work / f"{name}-{clips}-{size}"
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        from pipeline.standins import get_standin

        standin = get_standin(name)
        options, _ = synth_options(name, clips)
        if {"width", "height"} <= {f.name for f in fields(standin.config)}:  # UCF101's is fixed
            options["width"], options["height"] = (int(v) for v in size.split("x"))
        config = standin.config(**options, seed=0, workers=2, progress=True)
        standin.check(config)
        standin.synthesize(root, config)
        (root / ".complete").write_text("")
    return root


def run_once(name: str, method: str, root: Path, out: Path) -> dict:
    """One fresh process preparing the corpus one way: {seconds, startup, peak_mib}."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, __file__, "_run", name, method, str(root), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{method} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(
    name: str, methods: list[str], root: Path, work: Path, n: int, repeat: int
) -> tuple[dict, list[dict]]:
    """`repeat` rounds, each running every method once in turn, so that a slow spell of the shared machine
    hits all of them alike (see METHODS for the order). Returns the median per method and the rounds
    themselves (for ratios)."""
    rounds = []
    for index in range(repeat):
        order = list(methods)
        if index % 2:  # odd rounds: each pair the other way round
            for first, second in (("ours-1", "decode-only"), ("ours-2", "baseline")):
                if first in order and second in order:
                    i, j = order.index(first), order.index(second)
                    order[i], order[j] = second, first
        rounds.append({m: run_once(name, m, root, work / f"out-{name}-{n}-{m}") for m in order})
    medians = {}
    for m in methods:
        medians[m] = {
            key: statistics.median(r[m][key] for r in rounds)
            for key in ("seconds", "cpu_seconds", "startup", "engine_start")
        }
        medians[m]["peak_mib"] = max(r[m]["peak_mib"] for r in rounds)
        medians[m]["clips_per_s"] = n / medians[m]["seconds"]
    return medians, rounds


def ratio(rounds: list[dict], top: str, bottom: str, key: str = "seconds") -> str:
    """Median (and range) over rounds of key[top] / key[bottom], each ratio within one round."""
    values = sorted(r[top][key] / r[bottom][key] for r in rounds)
    return f"{statistics.median(values):.2f}x (rounds: {values[0]:.2f}-{values[-1]:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="cremad", choices=sorted(VIDEO_FILES))
    parser.add_argument("--clips", type=int, nargs="+", default=[160, 640])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mlbpipe-bench"))
    parser.add_argument(
        "--size", default=None, help="video size of the synthetic corpus [default: the real one's]"
    )
    parser.add_argument("--methods", nargs="+", default=None, choices=METHODS, help="[default: all; no baseline "
                        "but for cremad]")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=5, help="rounds (each runs every method once)")
    args = parser.parse_args()
    size = args.size or DEFAULT_SIZES[args.corpus]
    if args.methods is None:
        args.methods = [m for m in METHODS if args.corpus == "cremad" or m != "baseline"]
    if "baseline" in args.methods and args.corpus != "cremad":
        parser.error("the baseline reads CREMA-D's FLV and WAV files: --corpus cremad only")
    print(
        f"{os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.1f}; corpus {args.corpus} {size}"
    )

    results: dict[int, dict[str, dict]] = {}
    for wanted in args.clips:
        n = synth_options(args.corpus, wanted)[1]
        root = make_corpus(args.work, args.corpus, n, size)
        results[n], rounds = measure(args.corpus, args.methods, root, args.work, n, args.repeat)
        for method, r in results[n].items():
            # ours-2's workers are children of the fork server, ray-2's of Ray's raylet, not of the measured
            # process: no CPU time (and ray-2's peak is the driver's only)
            cpu = "     n/a" if method in ("ours-2", "ray-2") else f"{r['cpu_seconds']:6.2f} s"
            print(
                f"N={n:4d} {method:18s} {r['seconds']:7.2f} s  {r['clips_per_s']:7.2f} clips/s  "
                f"cpu {cpu}  peak {r['peak_mib']:7.1f} MiB  (+ {r['startup']:.2f} s imports)  "
                f"[median of {args.repeat}]"
                + (f"  (engine start {r['engine_start']:.2f} s)" if method == "ray-2" else ""),
                flush=True,
            )
        if {"ours-2", "baseline"} <= set(args.methods):
            print(
                f"N={n}: baseline time / ours (2 workers) time = {ratio(rounds, 'baseline', 'ours-2')}  (goal >= 3)"
            )
        if {"ours-1", "decode-only"} <= set(args.methods):
            print(
                f"N={n}: ours (1 worker) time / decode-only time = {ratio(rounds, 'ours-1', 'decode-only')}"
                "  (goal <= 1.5)"
            )
            print(
                f"N={n}: ours (1 worker) CPU time / decode-only CPU time = "
                f"{ratio(rounds, 'ours-1', 'decode-only', 'cpu_seconds')}  (the same, blind to waiting for a core)"
            )
        if {"ours-1-after-index", "decode-only"} <= set(args.methods):
            print(
                f"N={n}: ours (1 worker) without the index stage / decode-only = "
                f"{ratio(rounds, 'ours-1-after-index', 'decode-only')}  (validation's share of the gap)"
            )
        if {"ours-1", "ours-2"} <= set(args.methods):
            print(
                f"N={n}: ours 1 worker / 2 workers = {ratio(rounds, 'ours-1', 'ours-2')} (the machine's parallel gain)"
            )
        if {"ours-1", "ray-2"} <= set(args.methods):
            print(f"N={n}: throughput (clips/s) against local with 1 worker, the same rounds:")
            for method in ("ours-1", "ours-2", "ray-2"):
                if method in args.methods:  # clips/s ratio = time of ours-1 / time of the method
                    after = sorted(
                        r["ours-1"]["seconds"] / (r[method]["seconds"] - r[method]["engine_start"])
                        for r in rounds
                    )
                    print(
                        f"  {method:8s} {ratio(rounds, 'ours-1', method)}; after the engine started: "
                        f"{statistics.median(after):.2f}x"
                    )

    if len(results) >= 2:
        small, large = min(results), max(results)
        print(f"marginal cost per clip (N={small} -> N={large}, fixed start-up costs cancel out):")
        marginal = {}
        for method in args.methods:
            marginal[method] = (results[large][method]["seconds"] - results[small][method]["seconds"]) / (
                large - small
            )
            print(f"  {method:18s} {1000 * marginal[method]:6.1f} ms/clip")
        if {"ours-2", "baseline"} <= marginal.keys() and marginal["ours-2"] > 0:
            print(
                f"  marginal: baseline / ours (2 workers) = {marginal['baseline'] / marginal['ours-2']:.2f}x (goal >= 3)"
            )
        if {"ours-1", "decode-only"} <= marginal.keys() and marginal["decode-only"] > 0:
            print(
                f"  marginal: ours (1 worker) / decode-only = {marginal['ours-1'] / marginal['decode-only']:.2f}x "
                "(goal <= 1.5)"
            )
        for method in args.methods:
            growth = results[large][method]["peak_mib"] / results[small][method]["peak_mib"]
            print(f"peak memory {method}: N={large} / N={small} = {growth:.2f}x  (goal <= 1.2 for ours)")
    print(f"load average after: {os.getloadavg()[0]:.1f} (above the CPU count, other work shared the cores)")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "_run":
        _run(sys.argv[2], sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5]))
    else:
        main()
