"""Per-step training time of MLB and Multi-Loss relative to Joint Training, on the same model and batch,
measured in one process (the goal: MLB <= 1.05x Multi-Loss).

A step = forward (the method's `forward`), the method's loss, backward, the method's `before_step`,
Adam step, exactly as the trainer runs it; a method with several updates per batch (MLA) runs them all. Every method gets its own copy of the same initial model and the same fixed batch.
Methods are timed in turns (round-robin, rotating the order each repeat) so drifting machine load
hits them alike; each repeat times `--steps` steps after warm-up; the figure is the median over repeats.

    .venv/bin/python bench/bench_step.py --size tiny
    .venv/bin/python bench/bench_step.py --size small --features cached --fusion late-linear
    python3 bench/bench_step.py --device cuda --size paper --features raw --amp

Any registered method can be added with --methods (e.g. `joint,multi-loss,mlb,agm`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from mlb.balancing import build_balancer
from mlb.common.atomic import atomic_write_text
from mlb.models import build_model

# Input shapes per size: "paper" = the real CREMA-D tensors (257 x 188 STFT, 3 frames of 224 x 224;
# ~3 s of Wav2Vec2 at 50 Hz (768-d) and 90 face frames of EfficientNet-B2 (1408-d)), batch 32 (ResNet)
# or 8 (Conformer) as the authors trained.
INPUTS = {
    "tiny": {
        "spec": (32, 24),
        "frame": 32,
        "t_audio": 10,
        "t_video": 5,
        "d_audio": 12,
        "d_video": 20,
        "batch_raw": 8,
        "batch_cached": 8,
    },
    "small": {
        "spec": (128, 94),
        "frame": 112,
        "t_audio": 75,
        "t_video": 45,
        "d_audio": 768,
        "d_video": 1408,
        "batch_raw": 16,
        "batch_cached": 8,
    },
    "paper": {
        "spec": (257, 188),
        "frame": 224,
        "t_audio": 150,
        "t_video": 90,
        "d_audio": 768,
        "d_video": 1408,
        "batch_raw": 32,
        "batch_cached": 8,
    },
}


def make_batch(features: str, size: str, batch_size: int, device: torch.device, num_classes: int = 6):
    """A fixed random batch in the contract's layout (cached: a quarter of the clips padded to 60%)."""
    shape = INPUTS[size]
    g = torch.Generator().manual_seed(0)
    label = torch.arange(batch_size) % num_classes
    if features == "raw":
        f, t = shape["spec"]
        s = shape["frame"]
        batch = {
            "audio": torch.randn(batch_size, 1, f, t, generator=g),
            "video": torch.randn(batch_size, 3, 3, s, s, generator=g),
            "label": label,
        }
    else:
        batch = {"label": label}
        for m in ("audio", "video"):
            t, d = shape[f"t_{m}"], shape[f"d_{m}"]
            lengths = torch.full((batch_size,), t)
            lengths[::4] = max(1, int(0.6 * t))
            batch[m] = torch.randn(batch_size, t, d, generator=g)
            batch[f"{m}_mask"] = torch.arange(t)[None, :] < lengths[:, None]
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["id"] = [f"clip{i:04d}" for i in range(batch_size)]  # G-Blending holds clips out by id
    return batch


def run_bench(
    *,
    features: str,
    fusion: str,
    size: str,
    methods: list[str],
    device: str,
    batch_size: int | None,
    steps: int,
    warmup: int,
    repeats: int,
    amp: bool,
    sync_logs: bool,
    phases: bool = False,
    seed: int = 0,
) -> dict:
    """Median seconds per step for each method, and the ratios. Pure: returns a dict.

    phases: also time each phase of a step (forward, loss, backward, before_step, optimizer) with a
    device sync between phases (slower steps; use it to see the balancer's own cost, which is far
    less noisy on a loaded CPU than the difference of two whole-step medians)."""
    dev = torch.device(device)
    shape = INPUTS[size]
    bs = batch_size or shape[f"batch_{features}"]
    batch = make_batch(features, size, bs, dev)
    runs = {}
    for name in methods:
        balancer = build_balancer(name)
        torch.manual_seed(seed)  # the same initial weights for every method (MMCosine's cosine head aside)
        model = build_model(
            features=features,
            fusion=fusion,
            size=size,
            **balancer.model_options(),
            input_dims={"audio": shape["d_audio"], "video": shape["d_video"]},
        ).to(dev)
        balancer.check_model(model)
        balancer.sync_logs = sync_logs
        runs[name] = (model, balancer, torch.optim.Adam(model.parameters(), lr=1e-4))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    phase_times = {
        name: {p: [] for p in ("forward", "loss", "backward", "before_step", "optimizer")} for name in methods
    }

    def mark(record, phase, start):
        if record is not None:
            sync()
            now = time.perf_counter()
            record[phase].append(now - start)
            return now
        return start

    def step(model, balancer, optimizer, record=None):
        logs = {}
        for substep in range(balancer.updates_per_batch(model)):  # one update per batch, M for MLA
            balancer.substep = substep
            t = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                out = balancer.forward(model, batch)
                t = mark(record, "forward", t)
                loss, step_logs = balancer.loss(model, batch, out)
            t = mark(record, "loss", t)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t = mark(record, "backward", t)
            logs |= step_logs | balancer.before_step(model, batch, out)
            t = mark(record, "before_step", t)
            optimizer.step()
            mark(record, "optimizer", t)
        return logs

    for name, run in runs.items():  # warm-up (allocator, kernels, Adam state)
        for _ in range(warmup):
            step(*run)
        # one epoch boundary, so per-epoch methods run their steady-state step (PMR's prototypes exist)
        run[1].on_epoch_end(0, {"acc_audio": 0.5, "acc_video": 0.4, "acc": 0.6})
    sync()
    times = {name: [] for name in methods}
    for r in range(repeats):
        order = methods[r % len(methods) :] + methods[: r % len(methods)]
        for name in order:
            sync()
            start = time.perf_counter()
            for _ in range(steps):
                step(*runs[name])
            sync()
            times[name].append((time.perf_counter() - start) / steps)
    if phases:  # separate, synchronised passes: they must not disturb the whole-step timings above
        for r in range(repeats):
            for name in methods[r % len(methods) :] + methods[: r % len(methods)]:
                for _ in range(steps):
                    sync()
                    step(*runs[name], record=phase_times[name])
    median = {name: statistics.median(ts) for name, ts in times.items()}
    result = {
        "config": {
            "features": features,
            "fusion": fusion,
            "size": size,
            "batch_size": bs,
            "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor(),
            "threads": torch.get_num_threads(),
            "amp_bf16": amp,
            "sync_logs": sync_logs,
            "steps": steps,
            "warmup": warmup,
            "repeats": repeats,
            "torch": torch.__version__,
        },
        "median_step_s": median,
        "samples_per_s": {name: bs / t for name, t in median.items()},
        "min_step_s": {name: min(ts) for name, ts in times.items()},
    }
    if phases:
        result["median_phase_s"] = {
            name: {p: statistics.median(v) for p, v in ph.items()} for name, ph in phase_times.items()
        }
    if "joint" in median:
        result["relative_to_joint"] = {name: t / median["joint"] for name, t in median.items()}
    if "mlb" in median and "multi-loss" in median:
        result["mlb_over_multi_loss"] = median["mlb"] / median["multi-loss"]
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--features", choices=["raw", "cached"], default="raw")
    parser.add_argument("--fusion", default="late-linear")
    parser.add_argument("--size", choices=sorted(INPUTS), default="tiny")
    parser.add_argument("--methods", default="joint,multi-loss,mlb", help="comma-separated method names")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32 raw / 8 cached (paper)")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--no-sync-logs", action="store_true", help="keep logs as tensors (no per-step sync)")
    parser.add_argument("--phases", action="store_true", help="also time each phase of a step")
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available")
    result = run_bench(
        features=args.features,
        fusion=args.fusion,
        size=args.size,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        device=args.device,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.repeats,
        amp=args.amp,
        sync_logs=not args.no_sync_logs,
        phases=args.phases,
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return result


if __name__ == "__main__":
    main()
