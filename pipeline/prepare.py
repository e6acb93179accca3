"""`mlbpipe prepare CORPUS`: the preparation stages in order, on one corpus.

    prepare(Run(get_corpus("cremad"), root, out, PrepareConfig(...), executor=LocalExecutor(2)))

writes OUT/manifest.jsonl and OUT/corpus.json, OUT/work/<stage>.h5 (intermediates), OUT/shards/raw/ and
OUT/shards/cached/. Each stage is a module of pipeline.stages; this file only lists them (STAGES) and
passes paths and configs along. To add a stage: write its module, add its config to PrepareConfig and one
`Stage(...)` line to STAGES. A rerun skips finished work (each stage checks its own inputs and config), so
`prepare` resumes after an interruption.

`prepare_folds` makes the folds of a prepared folder (FOLDS/<k>/: manifest.jsonl, corpus.json, shards/),
each fold its own partition (or seed) of the protocol, all reading the one folder's per-clip intermediates:
frames, spectrograms, faces and features do not depend on the split, so they are computed once per corpus.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlb.common.lock import folder_lock
from mlb.common.stopping import Stopped, stop_on_signals
from pipeline.corpora.base import Corpus, CorpusError
from pipeline.engine import Executor
from pipeline.engine.executors import as_executor, one_thread
from pipeline.params import dotted, from_mapping, merge, stage_sections
from pipeline.stages.faces import FacesConfig
from pipeline.stages.features import FeaturesConfig
from pipeline.stages.frames import FramesConfig
from pipeline.stages.index import IndexConfig
from pipeline.stages.shards_cached import ShardsCachedConfig
from pipeline.stages.shards_raw import ShardsConfig
from pipeline.stages.spectrograms import SpectrogramConfig


@dataclass(frozen=True)
class PrepareConfig:
    """Every stage's config, keyed like params.yaml's sections."""

    index: IndexConfig = field(default_factory=IndexConfig)
    frames: FramesConfig = field(default_factory=FramesConfig)
    spectrograms: SpectrogramConfig = field(default_factory=SpectrogramConfig)
    shards_raw: ShardsConfig = field(default_factory=ShardsConfig)
    faces: FacesConfig = field(default_factory=FacesConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    shards_cached: ShardsCachedConfig = field(default_factory=ShardsCachedConfig)


def prepare_config(
    corpus: Corpus, params: dict, overrides: dict, where: str = "params.yaml"
) -> PrepareConfig:
    """The PrepareConfig of `corpus`: the dataclass defaults, then the corpus's own (`stage_defaults`: the
    authors' settings for that corpus), then params.yaml's sections (each global one with
    `corpora.<corpus>.<section>` over it, and the top-level `device`), then `overrides` ({"frames.size": 96,
    ...}). Unknown keys and bad values fail, naming the key."""
    base = corpus.stage_defaults
    if params.get("device") is not None:  # the run's device, under any section that names its own
        base = merge(base, {"faces": {"device": params["device"]}, "features": {"device": params["device"]}})
    sections = merge(base, stage_sections(params, corpus.name, where))
    return from_mapping(PrepareConfig, merge(sections, dotted(overrides)), where)


@dataclass
class Run:
    """What every stage gets: the corpus, where things are, the configs, and where work runs."""

    corpus: Corpus
    root: Path
    out: Path
    config: PrepareConfig = field(default_factory=PrepareConfig)
    executor: Executor | None = None  # None: everything in this process
    progress: bool = True
    update_manifest: bool = True  # faces marks clips without a face in the manifest (not under DVC)
    shared: Path | None = None  # a fold: the prepared folder whose manifest and intermediates it reads

    @property
    def manifest(self) -> Path:
        return self.out / "manifest.jsonl"

    def work(self, stage: str) -> Path:
        """The single HDF5 intermediate of a stage (a fold's: its prepared folder's)."""
        return (self.shared or self.out) / "work" / f"{stage}.h5"

    def shards(self, input_path: str) -> Path:
        return self.out / "shards" / input_path


def _index(run: Run):
    from pipeline.stages.index import check_kept, run_index, run_resplit

    if run.shared is not None:  # a fold: the prepared folder's records, split by this fold's partition
        records, summary = run_resplit(run.corpus, run.shared, run.out, run.config.index)
    else:
        records, summary = run_index(
            run.corpus, run.root, run.out, run.config.index, executor=run.executor, progress=run.progress
        )
    # a copy that keeps nothing (or nothing in a split) is an error here, not an empty shard folder later
    check_kept(records, summary, run.corpus, run.root, run.manifest)
    return summary


def _frames(run: Run):
    from pipeline.stages.frames import run_frames

    return run_frames(
        run.manifest,
        run.root,
        run.work("frames"),
        run.config.frames,
        executor=run.executor,
        progress=run.progress,
    )


def _spectrograms(run: Run):
    from pipeline.stages.spectrograms import run_spectrograms

    return run_spectrograms(
        run.manifest,
        run.root,
        run.work("spectrograms"),
        run.config.spectrograms,
        executor=run.executor,
        progress=run.progress,
    )


def _shards_raw(run: Run):
    from pipeline.stages.shards_raw import run_shards_raw

    return run_shards_raw(
        run.manifest, run.work("frames"), run.work("spectrograms"), run.shards("raw"), run.config.shards_raw
    )


def _faces(run: Run):
    from pipeline.stages.faces import run_faces

    # plain tasks, not for_models(): MTCNN is small, and video decoding wants every worker
    return run_faces(
        run.manifest,
        run.root,
        run.work("faces"),
        run.config.faces,
        executor=run.executor,
        progress=run.progress,
        update_manifest=run.update_manifest,
    )


def _features(run: Run):
    from pipeline.stages.features import run_features

    # The executor for models (pipeline.engine.executors): with a GPU, this process for the local engine (a
    # GPU belongs to one process) and one Ray actor per GPU; on a CPU, the engine's one-thread workers. Closed
    # with the stage, so Ray's actors free their GPUs before the next stage.
    with as_executor(run.executor).for_models(run.config.features.device) as models:
        return run_features(
            run.manifest,
            run.root,
            run.work("faces"),
            run.work("features"),
            run.config.features,
            executor=models,
            progress=run.progress,
        )


def _shards_cached(run: Run):
    from pipeline.stages.shards_cached import run_shards_cached

    return run_shards_cached(
        run.manifest,
        run.work("features"),
        run.shards("cached"),
        run.config.shards_cached,
        progress=run.progress,
    )


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Run], Any]
    input_path: str | None = None  # the input path it prepares (None: both)


# The stages in the order they run (the same names as in dvc.yaml).
STAGES: list[Stage] = [
    Stage("index", _index),
    Stage("frames", _frames, "raw"),
    Stage("spectrograms", _spectrograms, "raw"),
    Stage("shards_raw", _shards_raw, "raw"),
    Stage("faces", _faces, "cached"),  # the cached (Conformer) path: faces -> features -> shards_cached
    Stage("features", _features, "cached"),
    Stage("shards_cached", _shards_cached, "cached"),
]
STAGE_NAMES = tuple(stage.name for stage in STAGES)


def check_stages(stages: list[str] | None, corpus: Corpus | None = None) -> list[str]:
    """The stages to run, in pipeline order: `stages`, or every stage of the corpus's input paths for
    None. ValueError naming unknown stages, or stages of an input path the corpus does not have."""
    unknown = [s for s in stages or [] if s not in STAGE_NAMES]
    if unknown:
        raise ValueError(
            f"--stages: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGE_NAMES)}"
        )
    paths = corpus.input_paths if corpus is not None else ("raw", "cached")
    if stages is None:
        return [s.name for s in STAGES if s.input_path is None or s.input_path in paths]
    refused = [s.name for s in STAGES if s.name in stages and s.input_path not in (None, *paths)]
    if refused:
        raise ValueError(
            f"--stages: {corpus.name} has no {'/'.join(sorted({_path_of(s) for s in refused}))} input path, so no "
            f"{', '.join(refused)} stage ({corpus.input_paths_note or 'see its plug-in'}); prepare its "
            f"{', '.join(paths)} path: --stages {','.join(check_stages(None, corpus))}"
        )
    return [s for s in STAGE_NAMES if s in stages]


def _path_of(stage: str) -> str:
    return next(s.input_path for s in STAGES if s.name == stage)


class CachedPathUnavailable(ValueError):
    """The cached path cannot run: its extractors' weights are missing or unusable."""


def check_run(run: Run, stages: list[str]) -> None:
    """Everything that can be checked before any work starts, in the order a user fixes it: the protocol,
    the corpus root, then (for the cached path) the extractor weights. Raises CorpusError or ValueError."""
    run.config.index.protocol_of(run.corpus)
    if run.shared is not None:  # a fold reads its prepared folder, never the media
        return
    run.corpus.scan(run.root)  # a wrong or empty root: CorpusError naming the path and the fix
    if "index" not in stages:
        check_indexed_root(run)
    if "features" in stages:  # missing weights fail now, not after hours of faces
        from pipeline.stages.features import extractors_for

        try:
            extractors_for(run.config.features)
        except ValueError as err:
            raise CachedPathUnavailable(str(err)) from err


def check_indexed_root(run: Run) -> None:
    """A later stage reads the clips from the root that index read: another root (a `--root` or params.yaml
    entry that was changed in one place only) is refused, naming both."""
    described = run.out / "corpus.json"
    if not described.is_file():
        return  # not indexed yet: the stage itself says so
    indexed = json.loads(described.read_text()).get("root")
    if indexed is not None and Path(indexed).resolve() != Path(run.root).resolve():
        raise ValueError(
            f"{run.out} was indexed from {indexed}, not {run.root}: run the index stage on {run.root} first, or "
            f"give every stage the same root (under DVC, params.yaml's corpora.{run.corpus.name}.root and "
            f"cached_corpora.{run.corpus.name}.root)"
        )


def prepare(
    run: Run,
    stages: list[str] | None = None,
    *,
    on_done: Callable[[str, Any, float], None] | None = None,
    command: str | None = None,
):
    """Run `stages` (default: all, in order) after `check_run`; `on_done(stage, result, seconds)` after
    each. Raises CorpusError / ValueError on bad input.

    The run holds OUT for its whole life (mlb.common.lock: a second run on the same folder is refused, naming this
    one's `command`). SIGINT or SIGTERM stops it once the batches in progress are written, raising
    mlb.common.stopping.Stopped; the same command then goes on from there."""
    selected = check_stages(stages, run.corpus)
    one_thread()  # before check_run loads torch: this process computes as a worker does
    check_run(run, selected)
    with folder_lock(run.out, command or " ".join(sys.argv)), stop_on_signals() as stop:
        for stage in STAGES:
            if stage.name in selected:
                if stop.requested:  # between stages (the per-clip stages also stop between batches)
                    raise Stopped(
                        f"{stop.reason} before the {stage.name} stage: rerun the same command to continue"
                    )
                start = time.perf_counter()
                result = stage.run(run)
                if on_done is not None:
                    on_done(stage.name, result, time.perf_counter() - start)


FOLD_STAGES = ("index", "shards_raw", "shards_cached")  # what a fold can run: its splits, then its shards


def fold_stages(corpus: Corpus, prepared: Path) -> list[str]:
    """What a fold of `prepared` runs: index (a re-split), then the shards of every input path whose
    intermediates `prepared` holds. CorpusError when it holds none."""
    work = Path(prepared) / "work"
    stages = ["index"]
    if "raw" in corpus.input_paths and all((work / f"{s}.h5").is_file() for s in ("frames", "spectrograms")):
        stages.append("shards_raw")
    if "cached" in corpus.input_paths and (work / "features.h5").is_file():
        stages.append("shards_cached")
    if stages == ["index"]:
        raise CorpusError(
            f"{work} holds neither frames.h5 + spectrograms.h5 nor features.h5: prepare {corpus.name} into "
            f"{prepared} first (mlbpipe prepare {corpus.name} --root ROOT --out {prepared}), then make its folds"
        )
    return stages


def fold_config(corpus: Corpus, config: PrepareConfig, fold: int) -> PrepareConfig:
    """`config` with its index set to fold `fold` of the protocol (the partition, or a random protocol's
    seed: the corpus's `fold_setting`); ValueError for a protocol with one split or a fold it lacks."""
    protocol = config.index.protocol_of(corpus)
    setting = corpus.fold_setting(protocol)
    if setting is None:
        raise ValueError(
            f"--folds: {corpus.name}'s protocol {protocol!r} has one split, so no folds to prepare; its runs "
            "differ by training seed on the one prepared folder (mlbpipe compare --seeds 0,1,2)"
        )
    folded = replace(config, index=replace(config.index, **{setting: fold}))
    try:
        folded.index.protocol_of(corpus)
    except ValueError as err:
        raise ValueError(f"--folds {fold}: {err}") from None
    return folded


def prepare_folds(
    run: Run,
    folds: list[int],
    *,
    on_done: Callable[[int, str, Any, float], None] | None = None,
    command: str | None = None,
) -> dict[int, Path]:
    """Make folds `folds` of the prepared folder `run.shared` into `run.out/<k>/` (each with its manifest,
    corpus.json and shards; their meta.json's protocol names the fold, as `mlbpipe compare --folds`
    checks). Every fold's setting is checked before the first is written; `on_done(fold, stage, result,
    seconds)` after each stage. Returns {fold: its folder}."""
    configs = {fold: fold_config(run.corpus, run.config, fold) for fold in folds}  # settings first, then data
    stages = fold_stages(run.corpus, run.shared)
    described = Path(run.shared) / "corpus.json"  # the root it was indexed from: what a fold's messages name
    root = Path(json.loads(described.read_text())["root"]) if described.is_file() else run.root
    done = {}
    with folder_lock(run.shared, command or " ".join(sys.argv)):  # no prepare rewrites what the folds read
        for fold, config in configs.items():
            fold_run = replace(run, root=root, out=Path(run.out) / str(fold), config=config)
            report = (
                None if on_done is None else (lambda stage, result, s, k=fold: on_done(k, stage, result, s))
            )
            prepare(fold_run, stages, on_done=report, command=command)
            done[fold] = fold_run.out
    return done
