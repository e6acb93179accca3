"""Shard loading: WebDataset tars (docs/CONTRACTS.md, "Shards") to padded, normalised batches.

One epoch of one split is this list of stages (see `ShardLoader._pipeline`):

1. shard list    the split's tars as listed in `sizes.json` (names checked: no paths, no URLs);
2. shard shuffle a permutation that is a pure function of (seed, epoch); the same on every rank, so
                 the split below hands every rank disjoint shards (WebDataset's own `shardshuffle`
                 is therefore off: this stage replaces it, reproducibly);
3. split         every `world_size`-th shard from `rank` on (the loader's own rank and world size, one
                 source with the trainer's: not WebDataset's guess from the environment), then
                 `wds.split_by_worker` (loader workers);
4. read tars     `read_tar_samples`: members grouped by key (the WebDataset convention); every
                 member name is checked first (`check_member_name`): only `<key>.<name>.npy` and
                 `<key>.json` exist;
5. shuffle       a buffer of undecoded samples, its generator seeded with (seed, epoch, rank, worker);
6. decode        our own decoder, never WebDataset's defaults (they may unpickle): `.npy` with
                 `np.load(..., allow_pickle=False)`, `.json` with `json.loads`, anything else refused;
                 dtypes and fixed dims checked against `meta.json`;
7. to example    float32, normalised with `stats.json` (cached features) or ImageNet statistics (frames);
8. batch         `collate`: padding of variable-length sequences plus boolean masks.

Bad-sample policy: raise. A shard that breaks the contract (a forbidden field, a pickled or object
array, a missing field, a wrong dtype or shape, a label out of range, a key that differs from the json
id) stops the run with an error naming the shard and the clip. Nothing is skipped silently: prepare
already rejected bad clips with a reason, so a bad sample here means corrupt or foreign shards, and
dropping it would quietly change the data set.

Storage: the folder is a local path or a URL (`s3://bucket/prefix`); every read goes through `mlb.common.storage`
(pathlib locally, fsspec for URLs, each remote tar fetched whole with one request).

Epoch size comes from `sizes.json`: `ShardLoader.num_batches(epoch)` is exact, because the shard
order and the shard-to-rank/worker assignment are pure functions of (seed, epoch). A resumed run
replays an epoch's order and skips the batches it has already trained on (`skip_batches`).
"""

from __future__ import annotations

import functools
import io
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from mlb.common.contract import IMAGENET_MEAN, IMAGENET_STD, INPUT_PATHS, MODALITY_FIELDS, SPLITS
from mlb.common.storage import (
    PathOrURL,
    StorageError,
    check_folder,
    is_file,
    is_url,
    join,
    open_binary,
    read_text,
)

_MEAN, _STD = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)

_SHARD_NAME = re.compile(r"^(train|validation|test)-\d{6}\.tar$")
_MEMBER_NAME = re.compile(r"^[^./]+\.(json|[A-Za-z0-9_]+\.npy)$")
_STD_FLOOR = 1e-6  # a constant feature dimension must not divide by zero


class ShardError(ValueError):
    """A shard folder or sample that breaks the contract; the message names the file and the clip."""


class ShardMetaError(ShardError):
    """`meta.json` does not describe the shards the trainer was told to expect."""


# --- folder-level files: meta.json, sizes.json, stats.json ------------------------------------------


def read_json(path: PathOrURL) -> Any:
    try:
        return json.loads(read_text(path))
    except FileNotFoundError:
        raise ShardError(f"{path} is missing: is this a shard folder written by `mlbpipe prepare`?") from None
    except json.JSONDecodeError as err:
        raise ShardError(f"{path} is not valid JSON: {err}") from None


def read_sizes(folder: PathOrURL) -> dict[str, int]:
    """`sizes.json` as {tar name: sample count}; names must be plain `<split>-NNNNNN.tar` that exist."""
    sizes = read_json(join(folder, "sizes.json"))
    if not isinstance(sizes, dict):
        raise ShardError(
            f"{folder}/sizes.json must be an object {{tar name: count}}, got {type(sizes).__name__}"
        )
    for name, count in sizes.items():
        if not _SHARD_NAME.match(name):
            raise ShardError(
                f"{folder}/sizes.json lists {name!r}: shard names must look like train-000000.tar"
            )
        if not isinstance(count, int) or count < 0:
            raise ShardError(f"{folder}/sizes.json: count of {name} must be an integer >= 0, got {count!r}")
        if not is_file(join(folder, name)):
            raise ShardError(
                f"{folder}/sizes.json lists {name} but the file is missing: copy the shard folder again, or rerun the "
                "stage that wrote it"
            )
    return sizes


def check_meta(meta: Mapping[str, Any], expected: Mapping[str, Any], _prefix: str = "") -> None:
    """Refuse shards whose `meta.json` differs from what the trainer expects.

    Every key of `expected` must be in `meta` with an equal value; nested objects are compared key by
    key, so the error names the deepest differing key (e.g. `extractors.audio.layer`) and both values.
    Keys that `expected` does not mention are not compared.
    """
    for key, want in expected.items():
        name = f"{_prefix}{key}"
        if key not in meta:
            raise ShardMetaError(f"shard meta.json has no key {name!r}; the trainer expects {want!r}")
        have = meta[key]
        if isinstance(want, Mapping) and isinstance(have, Mapping):
            check_meta(have, want, _prefix=f"{name}.")
        elif _normalise(have) != _normalise(want):
            raise ShardMetaError(f"shard meta.json {name!r} is {have!r} but the trainer expects {want!r}")


def _normalise(value: Any) -> Any:
    """Tuples and lists compare equal (JSON has only lists)."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


@dataclass(frozen=True)
class ShardFolder:
    """The folder-level facts of one input path's shards (`OUT/shards/<input path>/`)."""

    path: PathOrURL  # a Path, or a URL string (pathlib would fold its `//`)
    meta: dict[str, Any]
    sizes: dict[str, int]
    stats: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @property
    def input_path(self) -> str:
        return self.meta["input_path"]

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    def shards(self, split: str) -> list[str]:
        """The split's tar names, sorted (the unshuffled order)."""
        if split not in SPLITS:
            raise ShardError(f"split must be one of {SPLITS}, got {split!r}")
        return sorted(name for name in self.sizes if name.startswith(f"{split}-"))

    def num_samples(self, split: str) -> int:
        return sum(self.sizes[name] for name in self.shards(split))

    @cached_property
    def normalisers(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """`stats.json` as float32 (mean, 1 / std) arrays per key, converted once rather than per sample."""
        return {
            key: (
                np.asarray(value["mean"], dtype=np.float32),
                1.0 / np.maximum(np.asarray(value["std"], dtype=np.float32), _STD_FLOOR),
            )
            for key, value in self.stats.items()
        }

    def field_shape(self, field_name: str) -> list[Any]:
        """The shape recorded in `meta.json` for a field; symbolic (str/None) dims are variable."""
        return list(self.meta["fields"][field_name]["shape"])


def open_shard_folder(path: PathOrURL, expected_meta: Mapping[str, Any] | None = None) -> ShardFolder:
    """Read and check `meta.json`, `sizes.json` and (if present) `stats.json` of a shard folder (a path or
    a URL: an unreachable endpoint, a missing bucket or prefix is a ShardError naming the URL and the fix)."""
    path = path if is_url(path) else Path(path)
    try:
        check_folder(path)  # a URL only: one listing, which also answers the existence checks below
        return _read_shard_folder(path, expected_meta)
    except StorageError as err:
        raise ShardError(str(err)) from None


def _read_shard_folder(path: PathOrURL, expected_meta: Mapping[str, Any] | None) -> ShardFolder:
    meta = read_json(join(path, "meta.json"))
    if not isinstance(meta, dict):
        raise ShardError(f"{path}/meta.json must be an object")
    for key in ("input_path", "num_classes", "fields"):
        if key not in meta:
            raise ShardMetaError(f"{path}/meta.json has no key {key!r}")
    if meta["input_path"] not in INPUT_PATHS:
        raise ShardMetaError(
            f"{path}/meta.json 'input_path' is {meta['input_path']!r}, not one of {INPUT_PATHS}"
        )
    if expected_meta:
        check_meta(meta, expected_meta)
    for modality, field_name in MODALITY_FIELDS[meta["input_path"]].items():
        if field_name not in meta["fields"]:
            raise ShardMetaError(
                f"{path}/meta.json 'fields' lacks {field_name!r} ({modality} of the {meta['input_path']} path)"
            )
    stats = read_json(join(path, "stats.json")) if is_file(join(path, "stats.json")) else {}
    if meta["input_path"] == "cached":
        for field_name in MODALITY_FIELDS["cached"].values():
            if field_name.removesuffix(".npy") not in stats:
                raise ShardError(
                    f"{path}/stats.json lacks {field_name.removesuffix('.npy')!r} (cached features)"
                )
    return ShardFolder(path=path, meta=meta, sizes=read_sizes(path), stats=stats)


# --- per-sample stages ----------------------------------------------------------------------------


def check_split(folder: ShardFolder, split: str) -> None:
    """ShardError naming the folder and the fix when `split` has no shard, or no clip, in sizes.json."""
    shards = folder.shards(split)
    if not shards:
        raise ShardError(
            f"{folder.path}: no {split} shards listed in sizes.json; rerun prepare (every split needs clips: check "
            "the split protocol and what the index stage rejected)"
        )
    if folder.num_samples(split) == 0:
        counts = {name: folder.sizes[name] for name in shards}
        raise ShardError(
            f"{folder.path}: the {split} split holds no clips (sizes.json: {counts}); rerun prepare"
        )


def check_member_name(name: str, where: str = "tar") -> bool:
    """Stage 4's gate, called on every tar member before it is read: refuse anything not in the contract."""
    if not _MEMBER_NAME.match(name):
        raise ShardError(
            f"{where}: member {name!r} is not allowed: shards hold only <key>.<name>.npy and <key>.json "
            "(no pickle, no other types, no dots in keys)"
        )
    return True


def read_tar_samples(
    shards: Iterator[dict[str, Any]], sizes: Mapping[str, int] | None = None
) -> Iterator[dict[str, Any]]:
    """Stage 4: `{"url": path or URL}` items to samples `{"__key__", "__url__", "<field>": bytes, ...}`.

    With `sizes` (`sizes.json`), a tar that holds another number of clips than listed is an error.

    Consecutive members with the same key form one sample (the WebDataset convention). Every member
    name goes through `check_member_name` before its bytes are read; links, folders and other
    non-file members are refused. (We do not use `wds.tarfile_to_samples` here: it reads tars in
    stream mode, 10 KB records at a time, which made shards 2x slower than per-clip files to read in
    bench/bench_loader.py; random-access mode reads each member with one call. A remote tar is read
    whole into memory first, with one request: `mlb.common.storage.open_binary`.)
    """
    import tarfile

    for item in shards:
        url = item["url"]
        sample: dict[str, Any] | None = None
        seen: set[str] = set()
        try:
            file = open_binary(url)  # closed below; samples are yielded while it is open
        except StorageError as err:  # the endpoint went away mid-run: not a corrupt shard
            raise ShardError(str(err)) from None
        except OSError as err:
            raise ShardError(_corrupt(url, err)) from None
        try:
            tar = tarfile.open(fileobj=file, mode="r:")  # noqa: SIM115 (as above)
        except (tarfile.TarError, OSError) as err:
            file.close()
            raise ShardError(_corrupt(url, err)) from None
        with file, tar:  # uncompressed tars only, as written by prepare
            members = iter(tar)
            while True:
                try:  # a tar cut short (a failed copy, a full disk) fails here, naming the shard
                    member = next(members, None)
                    if member is None:
                        break
                    data = tar.extractfile(member).read() if member.isfile() else None
                except (tarfile.TarError, EOFError, OSError) as err:
                    raise ShardError(_corrupt(url, err)) from None
                if data is None:
                    raise ShardError(f"{url}: member {member.name!r} is not a regular file")
                check_member_name(member.name, url)
                key, field_name = member.name.split(".", 1)
                if sample is None or sample["__key__"] != key:
                    if sample is not None:
                        yield sample
                    if key in seen:  # members of one clip must be adjacent
                        raise ShardError(f"{url}: clip {key} appears twice")
                    seen.add(key)
                    sample = {"__key__": key, "__url__": url}
                if field_name in sample:
                    raise ShardError(f"{url}: clip {key} has {field_name} twice")
                sample[field_name] = data
            tar.members = []  # keep no index of a finished shard
        expected = None if sizes is None else sizes.get(Path(url).name)
        if expected is not None and len(seen) != expected:
            raise ShardError(f"{url} holds {len(seen)} clips but sizes.json says {expected}")
        if sample is not None:
            yield sample


def _corrupt(url: str, err: BaseException) -> str:
    return (
        f"{url} is truncated or corrupt ({type(err).__name__}: {err}); copy it again, or rerun the stage that "
        "wrote it (mlbpipe prepare CORPUS --stages shards_raw or shards_cached)"
    )


def decode_sample(sample: dict[str, Any], folder: ShardFolder) -> dict[str, Any]:
    """Stage 6: bytes to numpy arrays and a dict. Never unpickles; checks dtypes and fixed dims."""
    key, url = sample["__key__"], sample.get("__url__", "?")
    where = f"clip {key} in {url}"
    out: dict[str, Any] = {"__key__": key}
    for name, value in sample.items():
        if name.startswith("__"):
            continue
        if name == "json":
            out["json"] = json.loads(value)
        elif name.endswith(".npy"):
            try:
                array = np.load(io.BytesIO(value), allow_pickle=False)
            except ValueError as err:  # object arrays need pickle: refused
                raise ShardError(f"{where}: field {name} cannot be read without pickle: {err}") from None
            _check_array(array, name, folder, where)
            out[name] = array
        else:  # unreachable through check_member_name; kept so that no other path can decode
            raise ShardError(f"{where}: field {name!r} has a type readers refuse")
    info = out.get("json")
    if not isinstance(info, dict):
        raise ShardError(f"{where}: the .json field is missing or not an object")
    if info.get("id") != key:
        raise ShardError(f"{where}: json id {info.get('id')!r} differs from the tar key")
    label = info.get("label")
    if not isinstance(label, int) or not 0 <= label < folder.num_classes:
        raise ShardError(f"{where}: label {label!r} is not an integer in [0, {folder.num_classes})")
    for field_name in MODALITY_FIELDS[folder.input_path].values():
        if field_name not in out:
            raise ShardError(f"{where}: field {field_name} is missing")
    return out


def _check_array(array: np.ndarray, name: str, folder: ShardFolder, where: str) -> None:
    spec = folder.meta["fields"].get(name)
    if spec is None:
        raise ShardError(f"{where}: field {name} is not listed in meta.json 'fields'")
    if str(array.dtype) != spec["dtype"]:
        raise ShardError(f"{where}: {name} has dtype {array.dtype}, meta.json says {spec['dtype']}")
    shape = spec["shape"]
    if array.ndim != len(shape) or any(isinstance(d, int) and d != n for d, n in zip(shape, array.shape)):
        raise ShardError(f"{where}: {name} has shape {list(array.shape)}, meta.json says {shape}")
    if 0 in array.shape:
        raise ShardError(f"{where}: {name} is empty (shape {list(array.shape)})")
    if array.dtype.kind == "f" and not np.isfinite(array).all():  # ~1 us per kB: cheap beside a step
        raise ShardError(
            f"{where}: {name} holds NaN or Inf values; the shard is corrupt or its extractor broke: rerun the "
            "stage that wrote it"
        )


def to_example(sample: dict[str, Any], folder: ShardFolder) -> dict[str, Any]:
    """Stage 7: one clip as float32 model inputs (normalised) plus label and id."""
    fields = MODALITY_FIELDS[folder.input_path]
    example: dict[str, Any] = {"id": sample["__key__"], "label": int(sample["json"]["label"])}
    example["group"] = sample["json"].get("group")  # actor, video, UCF group: the statistics' resampling unit
    if folder.input_path == "cached":
        for modality, field_name in fields.items():
            mean, inv_std = folder.normalisers[field_name.removesuffix(".npy")]  # [D], [D]
            x = sample[field_name].astype(np.float32)  # [T, D]
            x -= mean
            x *= inv_std
            example[modality] = x  # [T, D]
    else:
        spec = sample[fields["audio"]].astype(np.float32)  # [F, T]
        if "spec" in folder.normalisers:  # optional: per-frequency statistics
            mean, inv_std = folder.normalisers["spec"]  # [F] (or [1])
            spec = (spec - mean.reshape(-1, 1)) * inv_std.reshape(-1, 1)  # [F, T]
        example["audio"] = spec[None]  # [1, F, T]
        frames = sample[fields["video"]].astype(np.float32) / 255.0  # [N, H, W, 3]
        frames = (frames - _MEAN) / _STD  # [N, H, W, 3]
        example["video"] = np.ascontiguousarray(frames.transpose(0, 3, 1, 2))  # [N, 3, H, W]
    return example


def collate(examples: list[dict[str, Any]], input_path: str) -> dict[str, Any]:
    """Stage 8: a list of examples to a batch of tensors (docs/CONTRACTS.md, "Batches").

    Cached sequences are right-padded with zeros to the longest in the batch; `<modality>_mask` is True
    on valid steps.
    """
    import torch

    batch: dict[str, Any] = {
        "id": [e["id"] for e in examples],
        "group": [e["group"] for e in examples],
        "label": torch.tensor([e["label"] for e in examples], dtype=torch.int64),  # [B]
    }
    for modality in MODALITY_FIELDS[input_path]:
        arrays = [e[modality] for e in examples]
        if input_path == "cached":
            lengths = [a.shape[0] for a in arrays]
            padded = np.zeros((len(arrays), max(lengths), arrays[0].shape[1]), dtype=np.float32)  # [B, T, D]
            mask = np.zeros((len(arrays), max(lengths)), dtype=bool)  # [B, T]
            for i, (a, n) in enumerate(zip(arrays, lengths)):
                padded[i, :n] = a
                mask[i, :n] = True
            batch[modality] = torch.from_numpy(padded)
            batch[f"{modality}_mask"] = torch.from_numpy(mask)
        else:
            shapes = {a.shape for a in arrays}
            if len(shapes) != 1:
                raise ShardError(
                    f"{modality} shapes differ within a batch {sorted(shapes)} (ids {batch['id']})"
                )
            batch[modality] = torch.from_numpy(np.stack(arrays))  # [B, 1, F, T] or [B, N, 3, H, W]
    return batch


# --- order: pure functions of (seed, epoch) -------------------------------------------------------


def _ignore_stop_signals(_worker_id: int) -> None:
    """Loader workers leave SIGINT / SIGTERM to the trainer, which stops at a safe point (mlb.common.stopping)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _worker_message(message: str) -> str:
    """The original message of a ShardError that torch re-raised from a loader worker."""
    marker = "ShardError: "
    return (
        message.rsplit(marker, 1)[-1].strip()
        if "Original Traceback" in message and marker in message
        else message
    )


def shard_order(shards: list[str], seed: int, epoch: int, shuffle: bool) -> list[str]:
    """Stage 2: the epoch's shard order (sorted when not shuffling)."""
    shards = sorted(shards)
    if not shuffle:
        return shards
    permutation = np.random.default_rng([seed, epoch]).permutation(len(shards))
    return [shards[i] for i in permutation]


def assigned_shards(order: list[str], rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """The shards one worker of one rank reads: every world_size-th from rank, then every num_workers-th."""
    return order[rank::world_size][worker :: max(num_workers, 1)]


def _shuffle_buffer(samples: Iterator[dict], bufsize: int, rng: np.random.Generator) -> Iterator[dict]:
    """Stage 5: a reservoir of `bufsize` samples; each new sample replaces a random one that is yielded."""
    buffer: list[dict] = []
    for sample in samples:
        if len(buffer) < bufsize:
            buffer.append(sample)
            continue
        i = int(rng.integers(len(buffer)))
        buffer[i], sample = sample, buffer[i]
        yield sample
    for i in rng.permutation(len(buffer)):
        yield buffer[i]


def _batched(examples: Iterator[dict], batch_size: int, drop_last: bool, input_path: str) -> Iterator[dict]:
    chunk: list[dict] = []
    for example in examples:
        chunk.append(example)
        if len(chunk) == batch_size:
            yield collate(chunk, input_path)
            chunk = []
    if chunk and not drop_last:
        yield collate(chunk, input_path)


# --- the loader -------------------------------------------------------------------------------------


class ShardLoader:
    """Batches of one split of one shard folder, epoch by epoch.

    `iterate(epoch, skip_batches)` yields the epoch's batches in an order that depends only on (seed,
    epoch, num_workers, world size); `num_batches(epoch)` says how many there will be. Under DDP every
    rank stops after the smallest rank's count (`equal_work`), so no rank waits forever in a collective.
    """

    def __init__(
        self,
        folder: ShardFolder,
        split: str,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        num_workers: int = 0,
        shuffle_buffer: int = 512,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        pin_memory: bool = False,
        in_memory: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if in_memory and num_workers:
            raise ValueError(
                f"in_memory needs num_workers=0 (the decoded clips live in this process), got {num_workers}"
            )
        self.folder, self.split, self.batch_size = folder, split, batch_size
        self.shuffle, self.seed, self.num_workers = shuffle, seed, num_workers
        self.shuffle_buffer, self.drop_last, self.pin_memory = shuffle_buffer, drop_last, pin_memory
        if rank is None or world_size is None:
            import webdataset as wds

            rank, world_size, _, _ = wds.utils.pytorch_worker_info()
        self.rank, self.world_size = rank, world_size
        self.in_memory = in_memory
        self._decoded: dict[str, list[dict[str, Any]]] = {}  # in_memory: shard name -> its decoded examples
        self.shards = folder.shards(split)
        check_split(folder, split)

    @property
    def num_samples(self) -> int:
        return self.folder.num_samples(self.split)

    def _rank_batches(self, epoch: int, rank: int) -> int:
        order = shard_order(self.shards, self.seed, epoch, self.shuffle)
        total = 0
        for worker in range(max(self.num_workers, 1)):
            n = sum(
                self.folder.sizes[s]
                for s in assigned_shards(order, rank, self.world_size, worker, self.num_workers)
            )
            total += n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return total

    def num_batches(self, epoch: int = 0) -> int:
        """Exact number of batches `iterate(epoch)` yields on this rank (the minimum over ranks)."""
        return min(self._rank_batches(epoch, r) for r in range(self.world_size))

    def _pipeline(self, epoch: int):
        import webdataset as wds

        order = shard_order(self.shards, self.seed, epoch, self.shuffle)
        # 3. this rank's shards (`assigned_shards` before the worker split)
        folder, urls = (
            self.folder,
            [str(join(self.folder.path, name)) for name in order[self.rank :: self.world_size]],
        )

        def shuffle_stage(samples):
            _, _, worker, _ = wds.utils.pytorch_worker_info()
            if not self.shuffle:
                yield from samples
                return
            rng = np.random.default_rng([self.seed, epoch, self.rank, worker])
            yield from _shuffle_buffer(samples, self.shuffle_buffer, rng)

        def decode_stage(samples):
            for sample in samples:
                yield to_example(decode_sample(sample, folder), folder)

        def batch_stage(examples):
            yield from _batched(examples, self.batch_size, self.drop_last, folder.input_path)

        def decoded_shards(items):
            """in_memory: stages 4, 6-7 once per shard, then the kept examples. Shuffling the examples instead
            of the undecoded samples yields the same order, so the batches equal the streaming path's."""
            for item in items:
                name = Path(item["url"]).name
                if name not in self._decoded:
                    samples = read_tar_samples(iter([item]), sizes=folder.sizes)
                    self._decoded[name] = [to_example(decode_sample(s, folder), folder) for s in samples]
                yield from self._decoded[name]

        if self.in_memory:
            return wds.DataPipeline(
                wds.SimpleShardList(urls), wds.split_by_worker, decoded_shards, shuffle_stage, batch_stage,
            )  # fmt: skip
        return wds.DataPipeline(
            wds.SimpleShardList(urls),  # 1-3. this rank's shards in the (seed, epoch) order
            wds.split_by_worker,  # 3. loader workers
            functools.partial(read_tar_samples, sizes=folder.sizes),  # 4.
            shuffle_stage,  # 5.
            decode_stage,  # 6-7.
            batch_stage,  # 8.
        )

    def iterate(self, epoch: int = 0, skip_batches: int = 0) -> Iterator[dict[str, Any]]:
        """Yield the epoch's batches, after skipping the first `skip_batches` (resume mid-epoch)."""
        import torch

        pipeline = self._pipeline(epoch)
        if self.num_workers == 0:
            source: Any = pipeline
        else:
            # Our own generator: the loader must not draw from the global torch RNG (resume replays it).
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            source = torch.utils.data.DataLoader(
                pipeline,
                batch_size=None,
                num_workers=self.num_workers,
                generator=generator,
                pin_memory=self.pin_memory,
                worker_init_fn=_ignore_stop_signals,
            )
        limit = self.num_batches(epoch)
        try:
            for index, batch in enumerate(source):
                if index >= limit:  # equal work across DDP ranks
                    break
                if index >= skip_batches:
                    yield batch
        except ShardError as err:  # from a loader worker: its message comes wrapped in the worker's traceback
            raise ShardError(_worker_message(str(err))) from None
