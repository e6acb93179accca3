"""Shard loading (mlb.data): shapes, masks, normalisation, seeded order, hostile shards, meta checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.shards import (
    add_member,
    first_key,
    npy_bytes,
    object_npy_payload,
    pickle_payload,
    replace_member,
    write_shard_folder,
)

from mlb.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ShardError,
    ShardLoader,
    ShardMetaError,
    check_meta,
    open_shard_folder,
)


@pytest.fixture(scope="module")
def cached_dir(tmp_path_factory):
    return write_shard_folder(tmp_path_factory.mktemp("s") / "cached", "cached", video_dim=24)


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    return write_shard_folder(tmp_path_factory.mktemp("s") / "raw", "raw")


def _all(loader, epoch=0):
    return list(loader.iterate(epoch))


@pytest.mark.unit
def test_cached_batches_shapes_masks_and_normalisation(cached_dir):
    folder = open_shard_folder(cached_dir, {"input_path": "cached"})
    loader = ShardLoader(folder, "train", batch_size=5, shuffle=False)
    batches = _all(loader)
    assert len(batches) == loader.num_batches(0) == 5  # 24 clips, batches of 5: 5+5+5+5+4
    assert sum(len(b["id"]) for b in batches) == 24
    b = batches[0]
    assert b["audio"].dtype == torch.float32 and b["audio"].shape[0] == 5 and b["audio"].shape[2] == 16
    assert b["video"].shape[2] == 24
    assert b["audio_mask"].dtype == torch.bool and b["audio_mask"].shape == b["audio"].shape[:2]
    assert b["label"].dtype == torch.int64 and b["label"].shape == (5,)
    # Masks: True exactly on each clip's real steps, padding is zero.
    lengths = b["audio_mask"].sum(1)
    assert lengths.max() == b["audio"].shape[1]
    for i, n in enumerate(lengths.tolist()):
        assert b["audio_mask"][i, :n].all() and not b["audio_mask"][i, n:].any()
        assert (b["audio"][i, n:] == 0).all()
    # Normalisation with stats.json: over all train steps, mean ~0 and std ~1 per dimension.
    steps = torch.cat([bb["audio"][bb["audio_mask"]] for bb in batches])  # [sum T, D]
    assert torch.allclose(steps.mean(0), torch.zeros(16), atol=1e-2)
    assert torch.allclose(steps.std(0, unbiased=False), torch.ones(16), atol=1e-2)


@pytest.mark.unit
def test_raw_batches_shapes_and_imagenet_normalisation(raw_dir):
    folder = open_shard_folder(raw_dir)
    loader = ShardLoader(folder, "validation", batch_size=4, shuffle=False)
    batches = _all(loader)
    assert [len(b["id"]) for b in batches] == [4, 4, 4]
    b = batches[0]
    assert b["audio"].shape == (4, 1, 16, 20) and b["audio"].dtype == torch.float32
    assert b["video"].shape == (4, 3, 3, 16, 16) and "audio_mask" not in b
    # Undo the ImageNet normalisation: back to the uint8 pixels / 255.
    pixels = b["video"] * torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(
        1, 1, 3, 1, 1
    )
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert torch.allclose(pixels * 255, (pixels * 255).round(), atol=1e-3)


@pytest.mark.integration
def test_order_is_seeded_reproducible_and_changes_with_epoch(cached_dir):
    folder = open_shard_folder(cached_dir)

    def ids(seed, epoch, workers=0):
        loader = ShardLoader(
            folder, "train", batch_size=4, shuffle=True, seed=seed, num_workers=workers, shuffle_buffer=6
        )
        return [i for b in loader.iterate(epoch) for i in b["id"]]

    first = ids(1, 0)
    assert first == ids(1, 0)
    assert sorted(first) == sorted(ids(1, 1)) and first != ids(1, 1)
    assert first != ids(2, 0)
    assert len(set(first)) == 24  # every clip exactly once per epoch
    # With loader workers the order is still a pure function of (seed, epoch).
    two_workers = ids(1, 3, workers=2)
    assert two_workers == ids(1, 3, workers=2) and sorted(two_workers) == sorted(first)


@pytest.mark.unit
def test_skip_batches_resumes_the_same_order(cached_dir):
    folder = open_shard_folder(cached_dir)
    loader = ShardLoader(folder, "train", batch_size=4, shuffle=True, seed=5)
    full = [b["id"] for b in loader.iterate(2)]
    assert [b["id"] for b in loader.iterate(2, skip_batches=4)] == full[4:]


@pytest.mark.integration
def test_num_batches_exact_with_workers_and_ranks(cached_dir):
    folder = open_shard_folder(cached_dir)  # train: shards of 8, 8, 8
    loader = ShardLoader(folder, "train", batch_size=5, shuffle=True, num_workers=2)
    assert loader.num_batches(0) == len(list(loader.iterate(0))) == 2 + 4  # worker 0: 16 clips, worker 1: 8
    ranked = ShardLoader(folder, "train", batch_size=5, shuffle=True, rank=0, world_size=2)
    assert ranked.num_batches(0) == 2  # ranks get 16 and 8 clips: both stop after 2 batches


@pytest.mark.unit
@pytest.mark.parametrize("member", ["pickle", "pyd", "spec.pickle", "txt", "payload.npy"])
def test_hostile_member_is_refused_and_never_runs(tmp_path, member):
    folder = write_shard_folder(tmp_path / "raw", "raw", counts={"train": 8, "validation": 1, "test": 1})
    marker = tmp_path / "MARKER"
    tar = folder / "train-000000.tar"
    key = first_key(tar)
    payload = object_npy_payload(marker) if member.endswith(".npy") else pickle_payload(marker)
    add_member(tar, f"{key}.{member}", payload)
    loader = ShardLoader(open_shard_folder(folder), "train", batch_size=4, shuffle=False)
    with pytest.raises(ShardError) as err:
        _all(loader)
    assert not marker.exists(), "the pickle payload ran"
    assert key in str(err.value) or member in str(err.value)


@pytest.mark.unit
def test_object_array_in_a_contract_field_is_refused(tmp_path):
    folder = write_shard_folder(tmp_path / "raw", "raw", counts={"train": 4, "validation": 1, "test": 1})
    marker = tmp_path / "MARKER"
    tar = folder / "train-000000.tar"
    replace_member(tar, f"{first_key(tar)}.spec.npy", object_npy_payload(marker))
    with pytest.raises(ShardError, match="pickle"):
        _all(ShardLoader(open_shard_folder(folder), "train", batch_size=2, shuffle=False))
    assert not marker.exists()


@pytest.mark.unit
def test_bad_samples_raise_naming_the_clip(tmp_path):
    folder = write_shard_folder(tmp_path / "raw", "raw", counts={"train": 4, "validation": 1, "test": 1})
    tar = folder / "train-000000.tar"
    key = first_key(tar)
    replace_member(tar, f"{key}.spec.npy", npy_bytes(np.zeros((16, 21), np.float32)))
    with pytest.raises(ShardError, match=rf"{key}.*shape \[16, 21\]"):
        _all(ShardLoader(open_shard_folder(folder), "train", batch_size=2, shuffle=False))
    replace_member(tar, f"{key}.spec.npy", npy_bytes(np.zeros((16, 20), np.float64)))
    with pytest.raises(ShardError, match="dtype float64"):
        _all(ShardLoader(open_shard_folder(folder), "train", batch_size=2, shuffle=False))


@pytest.mark.unit
def test_check_meta_names_the_key_and_both_values(cached_dir):
    meta = json.loads((cached_dir / "meta.json").read_text())
    check_meta(meta, {"input_path": "cached", "extractors": {"audio": {"layer": 12}}})
    with pytest.raises(ShardMetaError, match=r"'input_path' is 'cached' but the trainer expects 'raw'"):
        check_meta(meta, {"input_path": "raw"})
    with pytest.raises(ShardMetaError, match=r"'extractors.audio.layer' is 12 but the trainer expects 9"):
        check_meta(meta, {"extractors": {"audio": {"layer": 9}}})
    with pytest.raises(ShardMetaError, match="no key 'fields.spec.npy'"):
        check_meta(meta, {"fields": {"spec.npy": {"dtype": "float32"}}})
    with pytest.raises(ShardMetaError, match="input_path"):
        open_shard_folder(cached_dir, {"input_path": "raw"})


@pytest.mark.unit
def test_sizes_json_names_are_checked(tmp_path):
    folder = write_shard_folder(tmp_path / "raw", "raw", counts={"train": 2, "validation": 1, "test": 1})
    (folder / "sizes.json").write_text(json.dumps({"../../etc/passwd": 1}))
    with pytest.raises(ShardError, match="shard names"):
        open_shard_folder(folder)


@pytest.mark.unit
def test_sizes_json_count_must_match_the_tar(tmp_path):
    folder = write_shard_folder(tmp_path / "raw", "raw", counts={"train": 8, "validation": 1, "test": 1})
    sizes = json.loads((folder / "sizes.json").read_text())
    sizes["train-000000.tar"] = 9
    (folder / "sizes.json").write_text(json.dumps(sizes))
    with pytest.raises(ShardError, match="holds 8 clips but sizes.json says 9"):
        _all(ShardLoader(open_shard_folder(folder), "train", batch_size=4, shuffle=False))
