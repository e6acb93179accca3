"""Data-parallel training under torchrun (gloo on CPU, two processes on the loopback address).

One torchrun launch (tests/ddp_worker.py) runs several `mlbpipe train` command lines in the same two
processes, recording each rank's coefficients and weights at every step; the tests below read it:
- every method keeps the two replicas bit-identical at every step (its statistics are reduced, so its
  coefficients agree), on 3 training shards for 2 ranks (an odd count: equal work, no hang);
- MLB's k_i agree across ranks at every step, and the 2-process run reaches the weights of one process
  trained on the same global batches (concatenated here from the two ranks' loaders);
- rank 0 alone writes the run's files, and a checkpoint written by 2 processes resumes on 1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.shards import write_shard_folder

from mlb.balancing import build_balancer
from mlb.data import ShardLoader, open_shard_folder
from mlb.models import build_model
from mlb.train import TrainConfig, train, train_step
from mlb.train.checkpoint import load_checkpoint
from mlb.train.config import TrainConfigError, TrainError
from mlb.train.step import StepContext
from mlb.train.trainer import check_world_shards, local_batch_size, seed_everything
from mlb.world import World

WORKER = Path(__file__).with_name("ddp_worker.py")
# Every method that serves the raw path's Late-Linear head (the unimodal "-only" methods need no balancing)
METHODS = (
    "joint", "multi-loss", "mlb", "ogm-ge", "ogm", "mslr", "agm", "pmr", "mmcosine", "mmpareto",
    "reconboost", "mla", "gblending", "dgl", "mcr", "dnr", "uni-pre-frozen", "uni-pre-finetuned",
)  # fmt: skip
# A method's own options in the launch (default: one epoch). D&R diagnoses after epoch 1 and re-initialises at
# the start of epoch 2, from every rank's training features (gathered) and rank 0's α; on its own shards (48
# clips: 16 rows per rank and epoch, enough that one rank's clusters are not all ranks', so that the replicas
# part when the rows are not gathered nor α broadcast).
OPTIONS = {"dnr": ["--epochs", "3", "--param", "dnr.reinit_every=1"]}
# Uni-Pre starts from the runs alone (trained first in the same launch, on two processes too); Ensemble
# trains nothing and only evaluates them, so it is launched too but checked on its predictions, not its steps
ALONE = ("audio-only", "video-only")
# Max |w_2proc - w_1proc| after 4 Adam steps: the global batch's gradients differ between the two only by
# float summation order (a sum over ranks against one over the batch, and BatchNorm's global statistics).
WEIGHT_TOLERANCE = 1e-5
COMMON = ["--features", "raw", "--size", "tiny", "--batch-size", "8", "--seed", "3", "--device", "cpu"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The torchrun launch: 2 processes, every method for 3 steps, MLB for 2 whole epochs, MLB stopped
    at step 3 (mid-epoch) for the resume test. Returns (OUT, runs folder, records per rank, stdout)."""
    root = tmp_path_factory.mktemp("ddp")
    out = root / "out"
    write_shard_folder(out / "shards" / "raw", "raw", counts={"train": 24}, shard_size=8)  # 3 train shards
    write_shard_folder(root / "dnr" / "shards" / "raw", "raw", counts={"train": 48}, shard_size=16)
    data = {"dnr": root / "dnr"}
    runs = root / "runs"
    sources = ["--init-encoders", f"audio={runs / 'audio-only'},video={runs / 'video-only'}"]
    pretrained = {"uni-pre-frozen": sources, "uni-pre-finetuned": sources, "ensemble": sources}
    commands = [
        ["train", *COMMON, "--data", str(out), "--out", str(runs / "mlb"), "--method", "mlb", "--epochs", "2",
         "--warmup-epochs", "2", "--dvclive"],
        ["train", *COMMON, "--data", str(out), "--out", str(runs / "stopped"), "--method", "mlb", "--epochs", "2",
         "--max-steps", "3", "--no-dvclive"],
    ] + [
        ["train", *COMMON, "--data", str(out), "--out", str(runs / m), "--method", m, "--epochs", "1", "--no-dvclive"]
        for m in ALONE
    ] + [
        ["train", *COMMON, "--data", str(data.get(m, out)), "--out", str(runs / m), "--method", m,
         *OPTIONS.get(m, ["--epochs", "1"]), "--no-dvclive", *pretrained.get(m, [])]
        for m in (*METHODS, "ensemble") if m != "mlb"
    ]  # fmt: skip
    argv = [a for command in commands for a in ([*command, "+++"])][:-1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), str(root / "records"),
         *argv],
        check=False, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    records = [json.loads((root / "records" / f"rank{r}.json").read_text()) for r in (0, 1)]
    return out, runs, records, result.stdout


def _record(records, rank: int, run: str) -> dict:
    return next(r for r in records[rank] if r["command"][r["command"].index("--out") + 1].endswith(f"/{run}"))


@pytest.mark.e2e
@pytest.mark.parametrize("method", METHODS)
def test_replicas_stay_identical_at_every_step(launched, method):
    _, _, records, _ = launched
    rank0, rank1 = _record(records, 0, method), _record(records, 1, method)
    assert rank0["weights"], "no training step was recorded"
    assert len(rank0["weights"]) == len(rank1["weights"])
    for step, (w0, w1) in enumerate(zip(rank0["weights"], rank1["weights"])):
        assert w0 == w1, f"{method}: the replicas differ after step {step + 1}"


@pytest.mark.e2e
def test_mlb_coefficients_agree_across_ranks_at_every_step(launched):
    _, _, records, _ = launched
    k0, k1 = _record(records, 0, "mlb")["k"], _record(records, 1, "mlb")["k"]
    assert len(k0) == len(k1) == 4  # 2 epochs x 2 steps: rank 1's one shard sets the pace
    assert k0 == k1
    assert any(abs(v - 1.0) > 1e-3 for step in k0 for v in step.values())  # MLB did modulate


def _concatenated_batches(folder, epoch: int, local_batch: int):
    """The global batches of a 2-process run: rank 0's and rank 1's batch, concatenated."""
    loaders = [
        ShardLoader(folder, "train", local_batch, shuffle=True, seed=3, rank=r, world_size=2) for r in (0, 1)
    ]
    for a, b in zip(*(loader.iterate(epoch) for loader in loaders)):
        yield {k: torch.cat([a[k], b[k]]) if torch.is_tensor(a[k]) else [*a[k], *b[k]] for k in a}


def _one_process_weights(out: Path, run: Path, rank_only: int | None = None) -> dict[str, torch.Tensor]:
    """MLB trained in this process as `mlb.train` does (same seed, model, optimiser, lr), on the global
    batches (or, with `rank_only`, on one rank's half only: the control that shows the tolerance bites)."""
    folder = open_shard_folder(out / "shards" / "raw")
    params = json.loads((run / "run.json").read_text())["method_params"]
    seed_everything(3)
    balancer = build_balancer("mlb", **params)
    model = build_model(features="raw", fusion="late-linear", num_classes=folder.num_classes, size="tiny",
                        dropout=None, **balancer.model_options())  # fmt: skip
    balancer.sync_logs = False
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=1e-3, weight_decay=1e-4)  # the raw path's defaults
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    model.train()
    for epoch in (0, 1):
        for batch in _concatenated_batches(folder, epoch, 4):
            if rank_only is not None:
                batch = {k: v[rank_only * 4 : rank_only * 4 + 4] for k, v in batch.items()}
            ctx = StepContext(model, balancer, optimizer, scaler, parameters, torch.device("cpu"))
            assert train_step(ctx, batch)
        balancer.on_epoch_end(epoch, {})
    return model.state_dict()


@pytest.mark.e2e
def test_two_processes_reach_the_weights_of_one_on_the_same_global_batch(launched):
    out, runs, _, _ = launched
    two = load_checkpoint(runs / "mlb" / "checkpoints" / "last.pt", ("model",))["model"]
    one = _one_process_weights(out, runs / "mlb")
    assert set(two) == set(one)  # GlobalBatchNorm keeps BatchNorm's parameter and buffer names

    def gap(a, b):
        return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())

    assert gap(two, one) < WEIGHT_TOLERANCE
    assert gap(two, _one_process_weights(out, runs / "mlb", rank_only=0)) > 100 * WEIGHT_TOLERANCE


@pytest.mark.e2e
def test_ensemble_on_two_processes_predicts_every_clip_as_on_one(launched, tmp_path):
    """Ensemble standardises each head's logits over the evaluation batch: every rank evaluates the whole
    split, so two processes give the one-process predictions clip for clip."""
    out, runs, records, _ = launched
    assert [_record(records, r, "ensemble")["code"] for r in (0, 1)] == [0, 0]
    one = tmp_path / "one"
    sources = f"audio={runs / 'audio-only'},video={runs / 'video-only'}"
    command = ["train", *COMMON, "--data", str(out), "--out", str(one), "--method", "ensemble", "--epochs", "1",
               "--no-dvclive", "--init-encoders", sources]  # fmt: skip
    subprocess.run([sys.executable, "-m", "pipeline.cli", *command], check=True, capture_output=True)
    predictions = json.loads((runs / "ensemble" / "test_predictions.json").read_text())
    assert predictions == json.loads((one / "test_predictions.json").read_text())
    assert predictions["fused"]  # the ensemble predicted the test clips


@pytest.mark.e2e
def test_rank_0_alone_writes_the_run(launched):
    _, runs, _, stdout = launched
    run = runs / "mlb"
    steps = (run / "steps.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in steps] == [1, 2, 3, 4]  # one line per step, not one per rank
    assert len((run / "epochs.jsonl").read_text().splitlines()) == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["world_size"] == 2 and metrics["training"]["steps"] == 4
    assert json.loads((run / "run.json").read_text())["batch_size_per_process"] == 4
    assert (run / "dvclive" / "metrics.json").is_file()
    assert stdout.count(f"wrote {run / 'metrics.json'}") == 1  # only rank 0 reports


@pytest.mark.e2e
def test_a_checkpoint_of_two_processes_resumes_on_one(launched):
    out, runs, _, _ = launched
    run = runs / "stopped"
    saved = load_checkpoint(run / "checkpoints" / "last.pt", ("state",))["state"]
    assert (saved["step"], saved["epoch"], saved["batch_in_epoch"]) == (3, 1, 1)
    config = TrainConfig(data=out / "shards" / "raw", out=run, features="raw", size="tiny", batch_size=8, seed=3,
                         device="cpu", epochs=2, dvclive=False, resume=True, method="mlb")  # fmt: skip
    performed = []
    result = train(config, on_step=lambda s: performed.append(s.step))
    # one process, 3 batches per epoch: epoch 1 continues after its first batch (2 more steps)
    assert result["training"]["steps"] == 5 and result["training"]["world_size"] == 1
    assert performed == [4, 5]


@pytest.mark.unit
def test_every_rank_needs_a_training_shard_and_an_even_share_of_the_batch(tmp_path):
    folder = open_shard_folder(write_shard_folder(tmp_path / "raw", "raw", counts={"train": 8}, shard_size=8))
    check_world_shards(folder, World(rank=0, size=1))
    with pytest.raises(TrainError, match="1 training shard.*2 training processes"):
        check_world_shards(folder, World(rank=0, size=2))
    assert local_batch_size(8, World(rank=1, size=2)) == 4
    with pytest.raises(TrainConfigError, match="batch_size=9 does not divide among 2"):
        local_batch_size(9, World(rank=0, size=2))
