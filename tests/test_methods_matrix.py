"""Every registered method × both input paths × every fusion head: two updates through the trainer's own
step (`mlb.train.step.train_step`, with the method's `forward` and `updates_per_batch`) and an epoch end, or a
refusal that names the fusion; and the new methods through `mlb.train.train` with an exact resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers.models import DIMS, random_inputs
from helpers.shards import write_shard_folder

from mlb.balancing import METHODS, build_balancer
from mlb.models import build_model
from mlb.models.fusion import FUSIONS
from mlb.train import TrainConfig, train, train_step
from mlb.train.checkpoint import load_checkpoint
from mlb.train.step import StepContext


def _batch(features: str, seed: int, b: int = 12) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = random_inputs(features, g, b, short_audio={0: 6})
    batch["label"] = torch.randint(0, 6, (b,), generator=g)
    batch["id"] = [f"clip{seed}_{i}" for i in range(b)]
    return batch


def _supports(cls, fusion: str) -> bool:
    return cls.supported_fusions is None or fusion in cls.supported_fusions


@pytest.mark.unit
@pytest.mark.parametrize("features", ["raw", "cached"])
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_or_refuses(name, fusion, features):
    cls = METHODS[name]
    # ReconBoost boosts one modality per stage: with one-epoch stages both encoders train within the test's
    # two epochs (at its defaults both epochs are audio's stage and video's encoder rightly stays put)
    short = {"boost_epochs": 1, "ensemble_epochs": 0} if name == "reconboost" else {}
    balancer = build_balancer(name, **short)
    torch.manual_seed(0)
    if not _supports(cls, fusion):
        with pytest.raises(ValueError, match=fusion):
            model = build_model(
                features=features, fusion=fusion, size="tiny", input_dims=DIMS, **balancer.model_options()
            )
            balancer.check_model(model)
        return
    model = build_model(
        features=features, fusion=fusion, size="tiny", input_dims=DIMS, **balancer.model_options()
    )
    balancer.check_model(model)
    balancer.sync_logs = False  # as the trainer runs it
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    start = copy.deepcopy(model.state_dict())
    model.train()
    for epoch in range(2):
        ctx = StepContext(model, balancer, optimizer, scaler, parameters, torch.device("cpu"))
        logs = train_step(ctx, _batch(features, epoch))
        assert logs is not None and all(isinstance(v, float) and math.isfinite(v) for v in logs.values()), (
            logs
        )
        balancer.on_epoch_end(
            epoch, {"acc": 0.3, "acc_audio": 0.2 + 0.1 * epoch, "acc_video": 0.25, "loss": 1.0}
        )
    moved = {
        n.split(".")[1]
        for n, p in model.state_dict().items()
        if n.startswith("encoders.") and not torch.equal(p, start[n])
    }
    assert moved == {"audio", "video"}, f"{name} moved the encoders of {moved}"
    # the state survives a checkpoint (torch.save, a weights_only load into a fresh balancer) unchanged
    from helpers.balancer_state import assert_state_round_trip

    assert_state_round_trip(name, balancer)


NEW_METHODS = ("mla", "gblending", "dgl", "mmpareto", "reconboost", "mcr")
# settings that make a method's state matter within the test's two epochs
RESUME_PARAMS = {
    "gblending": {"super_epoch": 1, "holdout": 0.25},  # a weight update inside two epochs
    "mcr": {"ceb_weight": 1.0, "samples": 4},  # the L_CEB decoder's weights and the permutations' RNG
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    return write_shard_folder(out / "raw", "raw", counts={"train": 24, "validation": 8, "test": 8})


@pytest.mark.integration
@pytest.mark.parametrize("name", [m for m in NEW_METHODS if m in METHODS])
def test_new_methods_train_and_resume_exactly(name, shards, tmp_path):
    kw = {
        "data": shards,
        "features": "raw",
        "size": "tiny",
        "epochs": 2,
        "batch_size": 8,
        "seed": 1,
        "device": "cpu",
        "dvclive": False,
        "method": name,
        "fusion": "late-linear",
        "checkpoint_every": 2,
    }
    kw["method_params"] = RESUME_PARAMS.get(name, {})
    straight = train(TrainConfig(out=tmp_path / "straight", **kw))

    class Interrupt(Exception):
        pass

    def interrupt(state):
        if state.step == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(TrainConfig(out=tmp_path / "resumed", **kw), on_step=interrupt)
    performed = []  # a restart from step 0 would end with the same weights: check where it started
    resumed = train(
        TrainConfig(out=tmp_path / "resumed", resume=True, **kw), on_step=lambda s: performed.append(s.step)
    )
    assert performed == [5, 6]  # after last.pt's step 4, to 2 epochs x 3 batches
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert name != "mcr" or "prediction_decoder.0.weight" in a["model"]  # the decoder's weights resume too
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert resumed["test"] == straight["test"]
