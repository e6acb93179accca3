"""Benchmark of the cached path's heavy steps: clips/s of MTCNN faces, EfficientNet-B2 and Wav2Vec2, and
peak memory, on CPU or CUDA.

    .venv/bin/python bench/bench_features.py                          # CPU, defaults below
    .venv/bin/python bench/bench_features.py --clips 8 --batch-size 32 --threads 2
    .venv/bin/python bench/bench_features.py --device cuda --clips 64 --batch-size 128 --dtype float16

A "clip" is CREMA-D-sized: `--frames` video frames (default 75: 2.5 s at 30 fps) of `--size` (480x360)
showing a real face (scikit-image's astronaut photo, moving a little), and `--seconds` (2.5) of 16 kHz
audio. Each step runs in a fresh process, so "peak RSS" is that step's own resident-set peak (model +
data); on CUDA the GPU figure is `torch.cuda.max_memory_allocated`.

- faces: decoded frames in memory → MTCNN (batches of --batch-size frames) → best face → crop → resize
  to 260 (decoding is not included: see bench/bench_prepare.py for decode rates).
- effb2: --frames face crops at --image-size per clip through EfficientNet-B2 (random weights: speed does
  not depend on them), batches of --batch-size crops.
- w2v2: Wav2Vec2 up to layer 12, --w2v2-batch clips per call. `--w2v2-model large` (default) builds the
  architecture of facebook/wav2vec2-large-robust (24 x 1024, stable layer norm) with random weights,
  offline; `tiny` is the test model; a folder loads real weights.

The first batch of every step is a warm-up and is not timed.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def large_robust_config():
    """The architecture of facebook/wav2vec2-large-robust (its config.json values), random weights."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        conv_bias=True,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        layerdrop=0.0,
    )


def face_frames(n: int, width: int, height: int, seed: int) -> np.ndarray:
    """uint8 [n, height, width, 3]: the astronaut's head, drifting a few pixels per frame."""
    import cv2
    from skimage import data

    photo = cv2.resize(data.astronaut(), (height, height), interpolation=cv2.INTER_AREA)  # [H, H, 3]
    frames = np.full((n, height, width, 3), 90, np.uint8)
    rng = np.random.default_rng(seed)
    drift = np.cumsum(rng.integers(-2, 3, n))
    for i in range(n):
        left = int(np.clip((width - height) // 2 + drift[i], 0, width - height))
        frames[i, :, left : left + height] = photo
    return frames


def _timed(run_clip, clips: int, device: str) -> float:
    """Seconds for `clips` calls of run_clip(i), after one untimed warm-up call."""
    import torch

    run_clip(0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(clips):
        run_clip(i)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_step(step: str, args: argparse.Namespace) -> dict:
    """One step in this (fresh) process; returns its figures."""
    import torch

    torch.set_num_threads(args.threads)
    device = args.device
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    width, height = (int(v) for v in args.size.split("x"))

    if step == "faces":
        from pipeline.compute.faces import faces_of_frames, make_detector
        from pipeline.stages.faces import FacesConfig

        config = FacesConfig(batch_size=args.batch_size, device=device)
        detector = make_detector(config.min_face_size, config.device)
        frames = face_frames(args.frames, width, height, seed=0)
        found = []
        crop = {"crop_size": config.crop_size, "margin": config.margin, "min_prob": config.min_prob}
        seconds = _timed(
            lambda i: found.append(
                faces_of_frames(detector, frames, **crop, batch_size=config.batch_size).frames_with_face
            ),
            args.clips,
            device,
        )
        extra = {"frames_with_face": f"{min(found)}-{max(found)} of {args.frames}"}
    elif step == "effb2":
        from pipeline.compute.extractors import EffNetB2Config, EffNetB2Extractor
        from pipeline.stages.features import effb2_features

        extractor = EffNetB2Extractor(
            EffNetB2Config(weights="random", image_size=args.image_size, dtype=args.dtype), device
        )
        crops = np.random.default_rng(0).integers(
            0, 256, (args.frames, args.image_size, args.image_size, 3), dtype=np.uint8
        )
        seconds = _timed(lambda i: effb2_features(extractor, crops, args.batch_size), args.clips, device)
        extra = {"image_size": args.image_size}
    elif step == "w2v2":
        from transformers import Wav2Vec2Model

        from pipeline.compute.extractors import (
            Wav2Vec2Config,
            Wav2Vec2Extractor,
            build_wav2vec2,
            random_tiny_wav2vec2,
        )

        if args.w2v2_model == "large":
            torch.manual_seed(0)
            model = Wav2Vec2Model(large_robust_config()).eval()
            model.encoder.layers = model.encoder.layers[:12]  # what build_wav2vec2 does
            extractor = Wav2Vec2Extractor(
                Wav2Vec2Config(model="random-tiny", layer=12, dtype=args.dtype), device, model=model
            )
        elif args.w2v2_model == "tiny":
            extractor = Wav2Vec2Extractor(
                Wav2Vec2Config(model="random-tiny", dtype=args.dtype), device, model=random_tiny_wav2vec2()
            )
        else:
            config = Wav2Vec2Config(model=args.w2v2_model, dtype=args.dtype)
            extractor = Wav2Vec2Extractor(config, device, model=build_wav2vec2(config))
        rng = np.random.default_rng(0)
        batch = [
            rng.standard_normal(int(args.seconds * 16000)).astype(np.float32) for _ in range(args.w2v2_batch)
        ]
        calls = max(1, args.clips // args.w2v2_batch)
        seconds = _timed(lambda i: extractor.extract(batch), calls, device)
        seconds *= args.clips / (calls * args.w2v2_batch)  # per args.clips clips
        extra = {"model": args.w2v2_model, "dim": extractor.dim, "clips_per_call": args.w2v2_batch}
    elif step == "check":
        return check_against_cpu(args)
    else:
        raise ValueError(f"unknown step {step!r}")

    result = {
        "step": step,
        "device": device,
        "clips": args.clips,
        "seconds": round(seconds, 3),
        "clips_per_s": round(args.clips / seconds, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **extra,
    }
    if device.startswith("cuda"):
        result["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["gpu"] = torch.cuda.get_device_name()
    return result


def check_against_cpu(args: argparse.Namespace) -> dict:
    """Features on --device (with --dtype autocast) against float32 on CPU, same random weights: the
    largest difference relative to the largest CPU value, per extractor."""
    import torch
    from transformers import Wav2Vec2Model

    from pipeline.compute.extractors import (
        EffNetB2Config,
        EffNetB2Extractor,
        Wav2Vec2Config,
        Wav2Vec2Extractor,
    )

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (8, args.image_size, args.image_size, 3), dtype=np.uint8)
    effb2_config = EffNetB2Config(weights="random", image_size=args.image_size, dtype=args.dtype)
    on_cpu = EffNetB2Extractor(effb2_config, "cpu").extract(crops)
    on_device = EffNetB2Extractor(effb2_config, args.device).extract(crops)
    waves = [rng.standard_normal(n).astype(np.float32) for n in (40000, 32000)]
    torch.manual_seed(0)
    model = Wav2Vec2Model(large_robust_config()).eval()
    model.encoder.layers = model.encoder.layers[:12]
    w2v2_config = Wav2Vec2Config(model="random-tiny", dtype=args.dtype)
    audio_cpu = Wav2Vec2Extractor(w2v2_config, "cpu", model=model).extract(waves)
    audio_device = Wav2Vec2Extractor(w2v2_config, args.device, model=model).extract(waves)

    def rel(a, b):
        return float(np.abs(a - b).max() / np.abs(a).max())

    return {
        "step": "check",
        "device": args.device,
        "dtype": args.dtype,
        "effb2_rel_max_diff": rel(on_cpu, on_device),
        "w2v2_rel_max_diff": max(rel(a, b) for a, b in zip(audio_cpu, audio_device)),
        "w2v2_shapes_equal": all(a.shape == b.shape for a, b in zip(audio_cpu, audio_device)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps",
        default="faces,effb2,w2v2",
        help="comma-separated: faces, effb2, w2v2, and check (features on --device vs CPU)",
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--clips", type=int, default=4, help="timed clips per step (after one warm-up clip)")
    parser.add_argument("--frames", type=int, default=75, help="video frames per clip (2.5 s at 30 fps)")
    parser.add_argument("--size", default="480x360", help="WIDTHxHEIGHT of the video (CREMA-D: 480x360)")
    parser.add_argument("--seconds", type=float, default=2.5, help="audio seconds per clip")
    parser.add_argument("--batch-size", type=int, default=32, help="frames per MTCNN / EfficientNet call")
    parser.add_argument("--w2v2-batch", type=int, default=4, help="clips per Wav2Vec2 call")
    parser.add_argument(
        "--w2v2-model", default="large", help="large (random, large-robust shape) | tiny | FOLDER"
    )
    parser.add_argument("--image-size", type=int, default=260, help="EfficientNet-B2 input size")
    parser.add_argument("--dtype", default="float16", help="autocast dtype on CUDA (CPU computes in float32)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    results = []
    for step in args.steps.split(","):
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            result = pool.submit(bench_step, step.strip(), args).result()
        print(json.dumps(result), flush=True)
        if step.strip() != "check":
            results.append(result)
    print(f"\n{'step':<6} {'device':<7} {'clips/s':>8} {'s/clip':>8} {'peak RSS MiB':>13} {'GPU MiB':>8}")
    for r in results:
        print(
            f"{r['step']:<6} {r['device']:<7} {r['clips_per_s']:>8.3f} {1 / r['clips_per_s']:>8.2f} "
            f"{r['peak_rss_mib']:>13.0f} {r.get('gpu_peak_mib', '-'):>8}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
