"""`mlbpipe prepare cremad`: run the preparation stages in order on one corpus.

    mlbpipe prepare cremad --root CORPUS --out OUT [--workers N] [--protocol vavl|speaker-random]

writes OUT/manifest.jsonl, OUT/work/<stage>.h5 (intermediates) and OUT/shards/raw/. Each stage is a
module of pipeline.stages; this file only lists them (STAGES) and passes paths and configs along. To
add a stage (faces, features, shards_cached): write its module, add a config to PrepareConfig and one
`Stage(...)` line to STAGES. A rerun skips finished work (each stage checks its own inputs and config),
so `prepare` resumes after an interruption.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from pipeline.corpora.cremad import CorpusError
from pipeline.extractors import EffNetB2Config, Wav2Vec2Config
from pipeline.stages import exit_on, report_skipped, shared_workers
from pipeline.stages.faces import FacesConfig
from pipeline.stages.features import FeaturesConfig
from pipeline.stages.frames import FramesConfig
from pipeline.stages.index import IndexConfig
from pipeline.stages.shards_cached import ShardsCachedConfig
from pipeline.stages.shards_raw import ShardsConfig
from pipeline.stages.spectrograms import SpectrogramConfig


@dataclass
class PrepareConfig:
    """Every stage's config, keyed like params.yaml."""

    index: IndexConfig = field(default_factory=IndexConfig)
    frames: FramesConfig = field(default_factory=FramesConfig)
    spectrograms: SpectrogramConfig = field(default_factory=SpectrogramConfig)
    shards_raw: ShardsConfig = field(default_factory=ShardsConfig)
    # cached (Conformer) path, issue 4
    faces: FacesConfig = field(default_factory=FacesConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    shards_cached: ShardsCachedConfig = field(default_factory=ShardsCachedConfig)


@dataclass
class Run:
    """What every stage gets: where things are, the configs, and how to run."""

    root: Path
    out: Path
    config: PrepareConfig
    workers: int = 1
    progress: bool = True

    @property
    def manifest(self) -> Path:
        return self.out / "manifest.jsonl"

    def work(self, stage: str) -> Path:
        """The single HDF5 intermediate of a stage."""
        return self.out / "work" / f"{stage}.h5"

    def shards(self, input_path: str) -> Path:
        return self.out / "shards" / input_path


def _index(run: Run) -> None:
    from pipeline.stages.index import print_summary, run_index

    _, summary = run_index(run.root, run.out, run.config.index, workers=run.workers, progress=run.progress)
    print_summary(summary)


def _frames(run: Run) -> None:
    from pipeline.stages.frames import run_frames

    report_skipped(
        "frames",
        run_frames(
            run.manifest,
            run.root,
            run.work("frames"),
            run.config.frames,
            workers=run.workers,
            progress=run.progress,
        ),
    )


def _spectrograms(run: Run) -> None:
    from pipeline.stages.spectrograms import run_spectrograms

    report_skipped(
        "spectrograms",
        run_spectrograms(
            run.manifest,
            run.root,
            run.work("spectrograms"),
            run.config.spectrograms,
            workers=run.workers,
            progress=run.progress,
        ),
    )


def _shards_raw(run: Run) -> None:
    from pipeline.stages.shards_raw import print_shard_summary, run_shards_raw

    sizes, skipped = run_shards_raw(
        run.manifest, run.work("frames"), run.work("spectrograms"), run.shards("raw"), run.config.shards_raw
    )
    print_shard_summary(sizes, skipped)


# --- cached (Conformer) path, issue 4: faces → features → shards_cached ---------------------------------
def _faces(run: Run) -> None:
    from pipeline.stages.faces import print_faces_summary, run_faces

    print_faces_summary(
        run_faces(
            run.manifest,
            run.root,
            run.work("faces"),
            run.config.faces,
            workers=run.workers,
            progress=run.progress,
        )
    )


def _features(run: Run) -> None:
    from pipeline.stages.features import print_features_summary, run_features

    # one process: the models are big, and a GPU belongs to one process
    print_features_summary(
        run_features(
            run.manifest,
            run.root,
            run.work("faces"),
            run.work("features"),
            run.config.features,
            progress=run.progress,
        )
    )


def _shards_cached(run: Run) -> None:
    from pipeline.stages.shards_cached import print_shard_summary, run_shards_cached

    print_shard_summary(
        *run_shards_cached(
            run.manifest,
            run.work("features"),
            run.shards("cached"),
            run.config.shards_cached,
            progress=run.progress,
        )
    )


# --- end of the cached path --------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Run], None]


# The stages in the order they run (the same names as in dvc.yaml).
STAGES: list[Stage] = [
    Stage("index", _index),
    Stage("frames", _frames),
    Stage("spectrograms", _spectrograms),
    Stage("shards_raw", _shards_raw),
    Stage("faces", _faces),  # cached path (issue 4)
    Stage("features", _features),
    Stage("shards_cached", _shards_cached),
]


def prepare(run: Run, stages: list[str] | None = None) -> None:
    """Run `stages` (default: all, in order). Raises CorpusError / ValueError on bad input."""
    names = [s.name for s in STAGES]
    unknown = [s for s in stages or [] if s not in names]
    if unknown:
        raise ValueError(f"--stages: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    with shared_workers(run.workers):  # the worker processes start once, for every stage
        for stage in STAGES:
            if stages is None or stage.name in stages:
                start = time.perf_counter()
                stage.run(run)
                if run.progress:
                    typer.echo(f"[{stage.name}] done in {time.perf_counter() - start:.1f} s", err=True)


def cli(
    root: Annotated[Path, typer.Option("--root", help="Corpus root (holds AudioWAV/ and VideoFlash/).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: manifest.jsonl, work/, shards/.")],
    workers: int = typer.Option(
        1, "--workers", help="Parallel processes (the output does not depend on it)."
    ),
    protocol: str = typer.Option("vavl", "--protocol", help="Splits: vavl (the paper's) | speaker-random."),
    partition: int = typer.Option(1, "--partition", help="VAVL partition 1-5."),
    seed: int = typer.Option(0, "--seed", help="Seed of the speaker-random protocol."),
    size: int = typer.Option(224, "--size", help="Frame height and width in pixels."),
    spec: str = typer.Option("mel", "--spec", help="mel (log-Mel) | stft (log-magnitude STFT, F = 257)."),
    n_mels: int = typer.Option(80, "--n-mels", help="Mel bands (--spec mel)."),
    maxcount: int = typer.Option(1000, "--maxcount", help="Samples per shard tar."),
    effb2_weights: str = typer.Option(
        "imagenet",
        "--effb2-weights",
        help="EfficientNet-B2 weights: imagenet | random | PATH to a state_dict.",
    ),
    w2v2_model: str = typer.Option(
        "facebook/wav2vec2-large-robust",
        "--w2v2-model",
        help="Wav2Vec2: hub id | local folder | random-tiny.",
    ),
    faces_fps: float = typer.Option(
        0.0, "--faces-fps", help="Faces: frames per second to keep; 0 = every frame (the paper's)."
    ),
    crop_size: int = typer.Option(
        260, "--crop-size", help="Face crop side and EfficientNet-B2 input size (its native 260)."
    ),
    device: str = typer.Option("auto", "--device", help="Faces and features: auto | cpu | cuda[:N]."),
    stages: str = typer.Option(
        ",".join(s.name for s in STAGES), "--stages", help="Comma-separated stages to run, in pipeline order."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Prepare CREMA-D for the ResNet path: index + validate, split, 1 fps frames, log-Mel spectrograms,
    WebDataset shards. Writes OUT/manifest.jsonl and OUT/shards/raw/; reruns skip finished work.
    Then the Conformer path: MTCNN faces, frozen EfficientNet-B2 + Wav2Vec2 features, OUT/shards/cached/
    (offline, pass local weights, or `--effb2-weights random --w2v2-model random-tiny` for a demo)."""
    with exit_on(CorpusError, ValueError):
        config = PrepareConfig(
            index=IndexConfig(protocol=protocol, partition=partition, seed=seed),
            frames=FramesConfig(size=size),
            spectrograms=SpectrogramConfig(kind=spec, n_mels=n_mels),
            shards_raw=ShardsConfig(maxcount=maxcount),
            faces=FacesConfig(fps=faces_fps or None, crop_size=crop_size, device=device),
            features=FeaturesConfig(
                effb2=EffNetB2Config(weights=effb2_weights, image_size=crop_size),
                w2v2=Wav2Vec2Config(model=w2v2_model),
                device=device,
            ),
            shards_cached=ShardsCachedConfig(maxcount=maxcount),
        )
        if workers < 1:
            raise ValueError(f"--workers={workers}: must be at least 1")
        run = Run(root=root, out=out, config=config, workers=workers, progress=not quiet)
        selected = [s.strip() for s in stages.split(",") if s.strip()]
        if "features" in selected:  # cached path: missing weights fail now, not after hours of faces
            from pipeline.stages.features import extractors_for

            try:
                extractors_for(config.features)
            except ValueError as err:
                raise ValueError(
                    f"{err}\nTo prepare only the ResNet path, add "
                    "--stages index,frames,spectrograms,shards_raw."
                ) from err
        prepare(run, selected)
