"""`mlbpipe prepare CORPUS`: the preparation stages on one corpus, and what each printed summary says."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.common import choice, command_errors, field_default, parse_key_values, split_csv
from pipeline.corpora import BUILTIN, corpus_for, corpus_names, get_corpus
from pipeline.manifest import SPLITS, format_summary
from pipeline.params import load_params
from pipeline.prepare import STAGE_NAMES, CachedPathUnavailable, Run, prepare, prepare_config, prepare_folds
from pipeline.stages.faces import FacesConfig
from pipeline.stages.frames import FramesConfig
from pipeline.stages.index import IndexConfig, NothingToPrepare
from pipeline.stages.shards_raw import ShardsConfig
from pipeline.stages.spectrograms import KINDS, SpectrogramConfig

# The options that set one setting (or the same setting of two stages) without spelling its key. Each
# default lives in its config dataclass; the help shows it.
SHORTCUTS = {
    "protocol": ("index.protocol",),
    "partition": ("index.partition",),
    "seed": ("index.seed",),
    "size": ("frames.size",),
    "spec": ("spectrograms.kind",),
    "n_mels": ("spectrograms.n_mels",),
    "maxcount": ("shards_raw.maxcount", "shards_cached.maxcount"),
    "effb2_weights": ("features.effb2.weights",),
    "w2v2_model": ("features.w2v2.model",),
    "faces_fps": ("faces.fps",),
    "crop_size": ("faces.crop_size", "features.effb2.image_size"),
    "device": ("faces.device", "features.device"),
}
ENGINES = ("local", "ray")
RUN_KEYS = ("workers", "device")  # top-level keys of params.yaml that prepare reads besides the sections


def _summary_lines(stage: str, result) -> tuple[list[str], list[str]]:
    """(stdout lines, stderr lines) of one stage's summary."""
    out, err = [], []
    if stage == "index":
        out.append(format_summary(result))
        files = result.get("ignored_files") or []
        if files:
            out.append(f"  ignored {len(files)} file(s) that are not media of a clip: {', '.join(files[:5])}")
        notes = result.get("notes") or []
        for note in notes[:10]:
            err.append(f"  note: {note}")
        if len(notes) > 10:
            err.append(f"  note: ... and {len(notes) - 10} more")
        coverage = result.get("coverage")
        if coverage is not None and coverage.ok:
            out.append(f"  copy: {coverage.describe()}")
        elif coverage is not None:
            err.append(f"  warning: this copy has {coverage.describe()}")
    elif stage in ("frames", "spectrograms"):
        err += [f"{stage}: {clip_id} skipped: {message}" for clip_id, message in sorted(result.items())]
    elif stage in ("shards_raw", "shards_cached"):
        sizes, skipped = result
        per_split = {s: sum(n for name, n in sizes.items() if name.startswith(f"{s}-")) for s in SPLITS}
        counts = ", ".join(f"{s} {n}" for s, n in per_split.items())
        out.append(f"{'shards' if stage == 'shards_raw' else stage}: {len(sizes)} tar(s); samples {counts}")
        err += [f"  skipped {clip_id}: {why}" for clip_id, why in sorted(skipped.items())]
        if stage == "shards_cached" and not per_split["train"]:
            err.append("  warning: no train clip has features: stats.json holds mean 0 / std 1 (count 0)")
    elif stage == "faces":
        out.append(
            f"faces: {result['clips']} clips, {result['frames_with_face']} of {result['frames_total']} frames with "
            f"a face, {len(result['no_face'])} clip(s) not usable for the cached path"
        )
        err += [f"  {clip_id}: {reason}" for clip_id, reason in result["no_face"].items()]
    elif stage == "features":
        audio, video = result["extractors"]["audio"], result["extractors"]["video"]
        out.append(
            f"features: {result['clips']} clips with features; audio {audio['model']} layer {audio['layer']} "
            f"({audio['dim']}-d), video {video['model']} at {video['input_size']} px ({video['dim']}-d)"
        )
        for name, entry in (("audio", audio), ("video", video)):
            if entry["random_init"]:
                err.append(
                    f"  note: the {name} extractor has RANDOM weights ({entry['weights']}): features are for "
                    "demos and tests only"
                )
        err += [f"  {clip_id} skipped: {message}" for clip_id, message in sorted(result["errors"].items())]
    return out, err


def print_stage(stage: str, result, seconds: float | None = None) -> None:
    out, err = _summary_lines(stage, result)
    for line in out:
        typer.echo(line)
    for line in err:
        typer.echo(line, err=True)
    if seconds is not None:
        typer.echo(f"[{stage}] done in {seconds:.1f} s", err=True)


def _print_fold_stage(quiet: bool):
    def report(fold: int, stage: str, result, seconds: float) -> None:
        if stage == "index":
            typer.echo(f"fold {fold}:")
        print_stage(stage, result, None if quiet else seconds)

    return report


def _check_folds(root, from_, folds, stages, partition, seed) -> list[int] | None:
    """The folds asked for (None: a plain prepare), or a usage error for options that do not go together."""
    if from_ is None and folds is None:
        if root is None:
            raise typer.BadParameter("is required (the corpus's folder)", param_hint="--root")
        return None
    if from_ is None or folds is None:
        given, missing = ("--folds", "--from") if from_ is None else ("--from", "--folds")
        raise typer.BadParameter(
            f"{given} needs {missing}: folds are made of a prepared folder", param_hint=given
        )
    clashes = {"--root": root, "--stages": stages, "--partition": partition, "--seed": seed}
    for option, value in clashes.items():
        if value is not None:
            raise typer.BadParameter(
                "does not go with --from: a fold reads its prepared folder (not the media), runs index and the "
                "shards it has intermediates for, and sets the partition (or a random protocol's seed) itself",
                param_hint=option,
            )
    return split_csv(folds, "--folds", int)


def cli(
    corpus: Annotated[
        str,
        typer.Argument(
            metavar="CORPUS", help=f"The corpus: {', '.join(corpus_names())}.", show_default=False
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Output folder: manifest.jsonl, corpus.json, work/, shards/ (with --folds: OUT/<k>/ per fold).",
        ),
    ],
    root: Path = typer.Option(
        None,
        "--root",
        help="The corpus root (a real copy, or one `mlbpipe synth` made).",
        show_default="required, but with --from",
    ),
    from_: Path = typer.Option(
        None,
        "--from",
        help="With --folds: a folder this command prepared (its manifest and work/ are read, the media "
        "never), whose folds are made into OUT/<k>/, sharing its frames, spectrograms, faces and features.",
        show_default="none",
    ),
    folds: str = typer.Option(
        None,
        "--folds",
        metavar="K,...",
        help="With --from: folds of the protocol, comma-separated, e.g. 1,2,3 (the partitions: CREMA-D "
        "VAVL, UCF101 splits; a random protocol's seeds). Each gets its own splits and shards.",
        show_default="none",
    ),
    params: Path = typer.Option(
        None,
        "--params",
        metavar="FILE",
        help="A params.yaml: its preparation sections (index, frames, ...), each with "
        "corpora.CORPUS.<section> over it, and its workers and device.",
        show_default="none: the config dataclasses' defaults",
    ),
    set_: list[str] = typer.Option(
        None,
        "--set",
        metavar="KEY=VALUE",
        help="Any setting by its key, e.g. --set frames.fps=2 --set faces.fps=null "
        "(repeatable; wins over --params).",
        show_default="none",
    ),
    workers: int = typer.Option(
        None,
        "--workers",
        help="Parallel processes (the output does not depend on it); with --engine ray, the CPUs "
        "(tasks at a time) to use.",
        show_default="params.yaml's workers, else 1",
    ),
    engine: str = typer.Option(
        "local",
        "--engine",
        metavar=choice(ENGINES),
        help="Where the per-clip work runs; local: a pool of processes on this machine; ray: Ray tasks of one "
        "CPU and one thread each, retried when a worker dies (needs the ray extra of mlbpipe). Both write the "
        "same shard bytes (one thread per task).",
    ),
    address: str = typer.Option(
        None,
        "--address",
        metavar="ADDRESS",
        help="With --engine ray: the Ray cluster to run on (auto, or ray://HOST:10001); the corpus root "
        "and --out must then be on storage every node sees at the same path.",
        show_default="start Ray on this machine with --workers CPUs",
    ),
    protocol: str = typer.Option(
        None,
        "--protocol",
        metavar="PROTOCOL",
        # the built-in corpora's: an installed plug-in is loaded when it is named, not for --help
        help="Split protocol (index.protocol), by corpus: "
        + "; ".join(f"{name}: {' | '.join(get_corpus(name).protocols)}" for name in sorted(BUILTIN))
        + " (cremad's vavl is the paper's).",
        show_default="the corpus's first",
    ),
    partition: int = typer.Option(
        None,
        "--partition",
        help="Partition of the protocol (index.partition; cremad VAVL 1-5).",
        show_default=str(field_default(IndexConfig, "partition")),
    ),
    seed: int = typer.Option(
        None,
        "--seed",
        help="Seed of a random protocol (index.seed).",
        show_default=str(field_default(IndexConfig, "seed")),
    ),
    size: int = typer.Option(
        None,
        "--size",
        help="Frame height and width in pixels (frames.size).",
        show_default=str(field_default(FramesConfig, "size")),
    ),
    spec: str = typer.Option(
        None,
        "--spec",
        metavar=choice(KINDS),
        help="Spectrogram kind (spectrograms.kind); mel: log-Mel; stft: log-magnitude STFT, F = 257; psd: "
        "scipy.signal.spectrogram, AVE's.",
        show_default="the corpus's (its authors': cremad stft, ave psd, ucf101 stft; generic and its presets mel)",
    ),
    n_mels: int = typer.Option(
        None,
        "--n-mels",
        help="Mel bands (spectrograms.n_mels).",
        show_default=str(field_default(SpectrogramConfig, "n_mels")),
    ),
    maxcount: int = typer.Option(
        None,
        "--maxcount",
        help="Samples per shard tar (shards_raw.maxcount and shards_cached.maxcount).",
        show_default=str(field_default(ShardsConfig, "maxcount")),
    ),
    effb2_weights: str = typer.Option(
        None,
        "--effb2-weights",
        metavar="imagenet|random|PATH",
        help="EfficientNet-B2 weights (features.effb2.weights); PATH: a .pth or .safetensors state_dict, or an "
        ".onnx export such as HSEmotion's enet_b2_8_best.onnx.",
        show_default="imagenet",
    ),
    w2v2_model: str = typer.Option(
        None,
        "--w2v2-model",
        metavar="ID|PATH|random-tiny",
        help="Wav2Vec2 (features.w2v2.model): a hub id, a local folder or random-tiny.",
        show_default="facebook/wav2vec2-large-robust",
    ),
    faces_fps: float = typer.Option(
        None,
        "--faces-fps",
        help="Faces: frames per second to keep; 0 = every frame, the paper's (faces.fps).",
        show_default="every frame",
    ),
    crop_size: int = typer.Option(
        None,
        "--crop-size",
        help="Face crop side and EfficientNet-B2 input size (faces.crop_size and features.effb2.image_size).",
        show_default=str(field_default(FacesConfig, "crop_size")),
    ),
    device: str = typer.Option(
        None,
        "--device",
        metavar="DEVICE",
        help="Where faces and features run: auto, cpu, cuda or cuda:N (faces.device and features.device).",
        show_default=str(field_default(FacesConfig, "device")),
    ),
    stages: str = typer.Option(
        None,
        "--stages",
        metavar="STAGE,...",
        help=f"Stages to run, comma-separated, in pipeline order: {', '.join(STAGE_NAMES)}.",
        show_default="every stage of the corpus's input paths",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    update_manifest: bool = typer.Option(
        True,
        "--update-manifest/--no-update-manifest",
        help="faces: mark the clips without a face in the "
        "manifest (off under DVC, where the manifest is the index stage's output).",
    ),
) -> None:
    """Prepare a corpus: index + validate + split (OUT/manifest.jsonl), then the ResNet path (1 fps frames,
    spectrograms, OUT/shards/raw/) and the Conformer path (MTCNN faces, frozen EfficientNet-B2 +
    Wav2Vec2 features, OUT/shards/cached/). Reruns skip finished work. Offline, the cached path needs local
    weights, or `--effb2-weights random --w2v2-model random-tiny` for a demo. With --from and --folds: the
    protocol's folds of a prepared folder (e.g. VAVL partitions 1-3), sharing its per-clip work."""
    from pipeline.engine import LocalExecutor

    if engine not in ENGINES:
        raise typer.BadParameter(f"{engine!r}: choose {' or '.join(ENGINES)}", param_hint="--engine")
    if address is not None and engine != "ray":
        raise typer.BadParameter(
            "names a Ray cluster: it needs --engine ray (the local engine runs on this machine)",
            param_hint="--address",
        )
    shortcuts = {
        "protocol": protocol, "partition": partition, "seed": seed, "size": size, "spec": spec, "n_mels": n_mels,
        "maxcount": maxcount, "effb2_weights": effb2_weights, "w2v2_model": w2v2_model,
        "faces_fps": faces_fps, "crop_size": crop_size, "device": device,
    }  # fmt: skip
    fold_list = _check_folds(root, from_, folds, stages, partition, seed)
    with command_errors("mlbpipe prepare", out):
        loaded = load_params(params) if params is not None else {}
        where = f"{params or 'the options'}"
        the_corpus = corpus_for(corpus, loaded, where)
        overrides = parse_key_values(set_, "--set")
        for option, value in shortcuts.items():
            if value is not None:
                value = (value or None) if option == "faces_fps" else value  # 0: every frame
                overrides |= dict.fromkeys(SHORTCUTS[option], value)
        config = prepare_config(the_corpus, loaded, overrides, where)
        workers = workers if workers is not None else loaded.get("workers", 1)
        selected = None if stages is None else [s.strip() for s in stages.split(",") if s.strip()]
        if engine == "ray":
            from pipeline.engine import RayExecutor

            executor = RayExecutor(workers, address)
        else:
            executor = LocalExecutor(workers)
        try:
            if (
                fold_list is not None
            ):  # folds of a prepared folder: no media read, its corpus.json has the root
                run = Run(the_corpus, from_, out, config, executor, progress=not quiet, shared=from_)
                prepare_folds(run, fold_list, on_done=_print_fold_stage(quiet))
                return
            run = Run(
                the_corpus, root, out, config, executor, progress=not quiet, update_manifest=update_manifest
            )
            try:
                prepare(
                    run,
                    selected,
                    on_done=lambda stage, result, seconds: print_stage(
                        stage, result, None if quiet else seconds
                    ),
                )
            except NothingToPrepare as err:  # nothing to do: exit 1 (docs/CONTRACTS.md), the manifest written
                typer.echo(f"mlbpipe prepare: error: {err}", err=True)
                raise typer.Exit(1) from None
            except CachedPathUnavailable as err:  # the ResNet path needs no weights
                raise ValueError(
                    f"{err}\nTo prepare only the ResNet path, add --stages "
                    "index,frames,spectrograms,shards_raw."
                ) from err
        finally:
            executor.close()
