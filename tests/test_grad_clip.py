"""Gradient clipping: `train_step` clips the global gradient norm after the method's `before_step` (against a
hand-computed update), the run's setting over the method's own (DGL: its authors' 40) recorded in run.json,
and bad settings refused naming the key."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from helpers.shards import write_shard_folder

from mlb.balancing import METHODS, Joint, build_balancer
from mlb.models import build_model
from mlb.train import TrainConfig, TrainConfigError, train, train_step
from mlb.train.step import StepContext

LR = 0.1  # plain SGD: the update is -LR times the (clipped) gradient
EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s: coefficient max_norm / (norm + EPS), at most 1


class Amplify(Joint):
    """Joint whose `before_step` multiplies every gradient by 1000: a known large gradient, and proof that
    clipping comes after the method's gradient changes. Not registered (tests only)."""

    name = "amplify-test"

    def before_step(self, model, batch, out):
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(1000.0)
        return {}


def _model():
    torch.manual_seed(0)
    model = build_model(features="cached", size="tiny", input_dims={"audio": 5, "video": 7}, dropout=0.0)
    return model.train()


def _batch(b: int = 6) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "audio": torch.randn(b, 9, 5, generator=g),
        "audio_mask": torch.ones(b, 9, dtype=torch.bool),
        "video": torch.randn(b, 4, 7, generator=g),
        "video_mask": torch.ones(b, 4, dtype=torch.bool),
        "label": torch.randint(0, 6, (b,), generator=g),
    }


def _hand_update(balancer, model, batch, max_norm: float | None) -> tuple[dict[str, torch.Tensor], float]:
    """On an independent copy: the gradients after `before_step`, their global L2 norm summed by hand, and
    the weights after one SGD step with the gradients scaled to `max_norm` (when the norm is larger).
    Returns ({name: weight}, the norm before clipping)."""
    model = copy.deepcopy(model)
    out = model(batch)
    loss, _ = balancer.loss(model, batch, out)
    loss.backward()
    balancer.before_step(model, batch, out)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads.values()))
    scale = 1.0 if max_norm is None else min(1.0, max_norm / (norm + EPS))
    with torch.no_grad():
        after = {n: p - LR * scale * grads.get(n, 0.0) for n, p in model.named_parameters()}
    return after, norm


def _step(balancer, model, batch, max_norm: float | None, scaled: bool = False) -> dict[str, float]:
    """One `train_step` with plain SGD; `scaled`: through an enabled GradScaler (loss x 65536, then unscaled)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    ctx = StepContext(
        model, balancer, torch.optim.SGD(parameters, lr=LR), torch.amp.GradScaler("cpu", enabled=scaled),
        parameters, torch.device("cpu"), grad_clip_norm=max_norm,
    )  # fmt: skip
    logs = train_step(ctx, batch)
    assert logs is not None
    return logs


@pytest.mark.unit
@pytest.mark.parametrize(
    ("method", "max_norm", "scaled"),
    [
        ("dgl", 0.05, False),  # below DGL's gradient norm on this batch: the step is scaled down
        ("dgl", 0.05, True),  # an fp16-style loss scale: the real (unscaled) norm is clipped
        ("amplify", 1.0, False),  # the x1000 of before_step is clipped, not the gradient before it
        ("dgl", 1e6, False),  # above the norm: the update is the plain one
        ("dgl", None, False),  # no clipping: the plain update, no grad_norm logged
    ],
)
def test_train_step_clips_the_global_gradient_norm_after_before_step(method, max_norm, scaled):
    model, batch = _model(), _batch()
    balancer = Amplify() if method == "amplify" else build_balancer(method)
    want, norm = _hand_update(balancer, model, batch, max_norm)
    if max_norm is not None and max_norm < 1:
        assert norm > 10 * max_norm  # the clip binds: the test would see a plain update
    logs = _step(balancer, model, batch, max_norm, scaled)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), want[name], rtol=1e-5, atol=1e-7, msg=name)
    if max_norm is None:
        assert "grad_norm" not in logs
    else:
        assert logs["grad_norm"] == pytest.approx(norm, rel=1e-5)  # the norm before clipping


@pytest.mark.unit
def test_the_runs_setting_wins_over_the_methods_own_and_0_turns_clipping_off(tmp_path):
    """DGL's authors clip at 40; no other method's authors clip unconditionally (AGM's conditional rule
    stays in agm.py). A run's value wins; 0 means none."""
    assert {name: cls.grad_clip_norm for name, cls in METHODS.items() if cls.grad_clip_norm} == {"dgl": 40.0}
    config = TrainConfig(data=tmp_path, out=tmp_path / "run")
    assert config.resolved_grad_clip_norm(METHODS["dgl"].grad_clip_norm) == 40.0
    assert config.resolved_grad_clip_norm(METHODS["joint"].grad_clip_norm) is None
    for user, method_default, used in [(5, 40.0, 5.0), (0, 40.0, None), (2.5, None, 2.5), (0.0, None, None)]:
        config = TrainConfig(data=tmp_path, out=tmp_path / "run", grad_clip_norm=user)
        assert config.resolved_grad_clip_norm(method_default) == used


@pytest.mark.unit
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), "40", True])
def test_a_bad_grad_clip_norm_is_refused_naming_the_key_and_the_value(tmp_path, value):
    config = TrainConfig(data=tmp_path, out=tmp_path / "run", grad_clip_norm=value)
    with pytest.raises(TrainConfigError, match=rf"grad_clip_norm={value!r}: must be a finite number > 0, 0"):
        config.validate()


@pytest.mark.unit
@pytest.mark.parametrize("value", [None, 0, 0.0, 1, 40.0])
def test_a_good_grad_clip_norm_is_taken(tmp_path, value):
    TrainConfig(data=tmp_path, out=tmp_path / "run", grad_clip_norm=value).validate()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip_shards")
    return write_shard_folder(out / "shards" / "cached", "cached", video_dim=8,
                              counts={"train": 8, "validation": 4, "test": 4})  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize(
    ("method", "user", "used"),
    [("dgl", None, 40.0), ("dgl", 3.0, 3.0), ("dgl", 0.0, None), ("joint", None, None), ("joint", 2.0, 2.0)],
)
def test_run_json_records_the_clip_used_and_steps_log_the_norm(shards, tmp_path, capsys, method, user, used):
    """run.json's grad_clip_norm is the value used (the user's setting stays in its config); the banner says
    it; steps.jsonl has each update's norm before clipping when there is clipping."""
    run = tmp_path / "run"
    train(
        TrainConfig(data=shards, out=run, features="cached", size="tiny", epochs=1, batch_size=4, max_steps=2,
                    method=method, grad_clip_norm=user, device="cpu", dvclive=False),
        test=False,
    )  # fmt: skip
    optimiser = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("  optimiser"))
    assert optimiser.endswith(f", gradient norm clipped at {used:g}" if used else "weight decay 5e-06")
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["grad_clip_norm"] == used and recorded["config"]["grad_clip_norm"] == user
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 2
    if used is None:
        assert all("grad_norm" not in step for step in steps)
    else:
        assert all(step["grad_norm"] > 0 for step in steps)
