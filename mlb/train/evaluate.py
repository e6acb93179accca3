"""Evaluation of one split during a run: the metrics that select the checkpoint (validation) and the ones
reported once (test), with the per-clip predictions that the paired statistics read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlb.data import ShardLoader
from mlb.metrics import evaluate
from mlb.train.step import autocast, to_device


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    loader: ShardLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    num_classes: int,
    predictions: dict[str, Any] | None = None,
    observe: Callable[[dict[str, Any], Any], None] | None = None,
) -> tuple[dict[str, Any], float]:
    """Metrics of one split (mlb.metrics.evaluate) and its mean fused cross-entropy.

    `predictions`, when given, is filled with the per-clip predicted classes in loader order:
    {"ids", "groups", "label", "fused", "unimodal": {modality: [...]}} (what `RUN/test_predictions.json`
    holds; the paired statistics of `mlb.analysis.stats` match two runs clip by clip and resample groups).
    `observe`, when given, is called with every batch and its `ModelOutput` (the balancer's
    `observe_validation` for the validation split)."""
    model.eval()
    ids, groups, labels, fused, unimodal = [], [], [], [], {}
    for batch in loader.iterate(0):
        batch = to_device(batch, device)
        with autocast(device, amp_dtype):
            out = model(batch)
        if observe is not None:
            observe(batch, out)
        ids += list(batch["id"])
        groups += list(batch.get("group") or [None] * len(batch["id"]))
        labels.append(batch["label"].cpu())
        fused.append(out.fused.float().cpu())  # [B, C]
        for m, logits in out.unimodal.items():
            unimodal.setdefault(m, []).append(logits.float().cpu())  # [B, C]
    label = torch.cat(labels)  # [N]
    fused_logits = torch.cat(fused)  # [N, C]
    loss = float(F.cross_entropy(fused_logits, label))
    metrics = evaluate(
        label.numpy(),
        fused_logits.numpy(),
        {m: torch.cat(v).numpy() for m, v in unimodal.items()},
        num_classes,
    )
    metrics["loss"] = loss
    if predictions is not None:
        predictions |= {
            "ids": ids,
            "groups": groups,
            "label": label.tolist(),
            "fused": fused_logits.argmax(dim=1).tolist(),
            "unimodal": {m: torch.cat(v).argmax(dim=1).tolist() for m, v in unimodal.items()},
        }
    return metrics, loss


def flat_val_metrics(metrics: dict[str, Any], loss: float) -> dict[str, float]:
    """The flat dict balancers get in `on_epoch_end`: acc, f1, ece, loss, acc_<modality>, f1_<modality>."""
    flat = {
        "acc": metrics["fused"]["accuracy"],
        "f1": metrics["fused"]["macro_f1"],
        "ece": metrics["fused"]["ece"],
        "loss": loss,
    }
    for m, head in metrics["unimodal"].items():
        flat |= {f"acc_{m}": head["accuracy"], f"f1_{m}": head["macro_f1"]}
    return flat
