"""audio-only / video-only: one encoder trained alone, the reference for the weaker modality's gap."""

from __future__ import annotations

import pytest
import torch
from helpers.shards import write_shard_folder

from mlb.balancing import build_balancer
from mlb.models import build_model
from mlb.train import TrainConfig, train
from mlb.train.checkpoint import load_checkpoint


@pytest.mark.unit
def test_video_only_leaves_the_audio_encoder_and_fusion_untouched():
    torch.manual_seed(0)
    model = build_model(features="raw", fusion="late-linear", num_classes=6, size="tiny")
    batch = {
        "audio": torch.randn(4, 1, 16, 20),
        "video": torch.randn(4, 3, 3, 16, 16),
        "label": torch.tensor([0, 1, 2, 3]),
    }
    balancer = build_balancer("video-only")
    out = model(batch)
    loss, logs = balancer.loss(model, batch, out)
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.encoders["audio"].parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.encoders["video"].parameters())
    assert all(p.grad is None or not p.grad.any() for p in model.fusion.parameters())
    assert model.unimodal_heads["audio"].weight.grad.any()  # the audio head is trained as a probe
    assert logs["loss"] == logs["loss_video"]


@pytest.mark.integration
def test_trainer_selects_alone_runs_on_their_own_head(tmp_path):
    import json

    data = tmp_path / "cached"
    write_shard_folder(data, "cached", video_dim=32)  # with lr 1e-3 the audio head learns in 2 epochs
    result = train(
        TrainConfig(
            data=data,
            out=tmp_path / "run",
            features="cached",
            method="audio-only",
            size="tiny",
            epochs=2,
            batch_size=8,
            lr=1e-3,
            dvclive=False,
            device="cpu",
        )
    )
    assert result["selected"]["criterion"] == "validation audio head accuracy"
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best["val_accuracy"] == result["selected"]["val_accuracy"]
    epochs = (tmp_path / "run" / "epochs.jsonl").read_text().splitlines()
    assert len(epochs) == 2
    audio = [json.loads(line)["val/acc_audio"] for line in epochs]
    fused = [json.loads(line)["val/acc"] for line in epochs]
    assert max(audio) > max(fused)  # the untrained fused head would select another epoch and value
    first_best = audio.index(max(audio))
    assert (result["selected"]["epoch"], result["selected"]["val_accuracy"]) == (
        first_best,
        audio[first_best],
    )
    assert result["validation"]["unimodal"]["audio"]["accuracy"] == audio[first_best]
