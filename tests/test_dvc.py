"""`dvc repro` on a copy of the repository with a tiny synthetic corpus: the second repro does nothing,
changing an STFT parameter reruns only the stages that depend on it, and editing what only the command
line or the reports hold (help texts, printed summaries, figures) reruns no preparation or training."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers.dvc import copy_repo, dvc, set_params, stages_ran
from helpers.plugins import install_example, with_site

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
TINY = {"synth": {"cremad": {"clips": 12, "width": 64, "height": 48}}, "frames": {"size": 32}, "workers": 1}


def _workspace_files(repo: Path) -> set[str]:
    """Every file of the workspace but git's and DVC's own bookkeeping (dvc.lock, .dvc/)."""
    return {
        p.relative_to(repo).as_posix()
        for p in repo.rglob("*")
        if p.is_file() and p.relative_to(repo).parts[0] not in (".git", ".dvc") and p.name != "dvc.lock"
    }


def _stage_outs(repo: Path) -> list[str]:
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return [out.def_path for stage in dvc_repo.index.stages for out in stage.outs]


def _declared(path: str, outs: list[str]) -> bool:
    """Inside a declared out, or a command's lock file (`.mlbpipe.lock`: who writes the folder, not a result)."""
    return Path(path).name == ".mlbpipe.lock" or any(
        path == o or path.startswith(o.rstrip("/") + "/") for o in outs
    )


def test_dvc_repro_is_incremental(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = copy_repo(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    set_params(repo / "params.yaml", TINY)

    # the ResNet path (the cached path's stages have their own tests)
    first = dvc(repo, "repro", "shards_raw@cremad")
    ran = stages_ran(first)  # frames and spectrograms are independent: DVC may run them in either order
    assert ran[:2] == ["synth@cremad", "index@cremad"], ran
    assert sorted(ran[2:4]) == ["frames@cremad", "spectrograms@cremad"] and ran[4:] == [
        "shards_raw@cremad"
    ], ran
    shards = repo / "data" / "cremad" / "shards" / "raw"
    assert (shards / "sizes.json").is_file() and list(shards.glob("train-*.tar"))
    before = {p.name: p.read_bytes() for p in shards.iterdir()}

    second = dvc(repo, "repro", "shards_raw@cremad")
    assert stages_ran(second) == [] and "up to date" in second

    # what only the command line and the reports hold: help texts, printed summaries, figures
    for edited in ("pipeline/cli/prepare.py", "pipeline/cli/common.py", "mlb/analysis/report.py"):
        with open(repo / edited, "a") as f:
            f.write("\n# an edit that changes no stage's work\n")
    assert stages_ran(dvc(repo, "repro", "shards_raw@cremad")) == []

    set_params(repo / "params.yaml", {"spectrograms": {"hop_length": 300}, "workers": 2})  # workers: no rerun
    third = dvc(repo, "repro", "shards_raw@cremad")
    assert stages_ran(third) == ["spectrograms@cremad", "shards_raw@cremad"]
    assert before["sizes.json"] == (shards / "sizes.json").read_bytes()
    assert (
        before["train-000000.tar"] != (shards / "train-000000.tar").read_bytes()
    )  # T changed: 1 + 66150 // 300


def test_a_corpus_added_in_params_gets_the_stages_its_input_paths_allow(tmp_path):
    """Uncommenting AVE and UCF101 under `corpora` (as params.yaml shows) adds their ResNet-path stages and
    synth stand-ins; the cached path's stages stay those of `cached_corpora`."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = copy_repo(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    text = (repo / "params.yaml").read_text()
    for line in ("# ave:", "#   root: data/ave/synthetic", "# ucf101:", "#   root: data/ucf101/synthetic"):
        assert f"  {line}\n" in text, line  # the commented blocks the comment tells users to uncomment
        text = text.replace(f"  {line}\n", f"  {line[2:]}\n", 1)
    (repo / "params.yaml").write_text(text)
    set_params(
        repo / "params.yaml",
        {
            "synth": {"ave": {"videos_per_category": 1, "width": 160, "height": 90}, "ucf101": {"groups": 1}},
            "corpora": {"ave": {"frames": {"size": 32}}},
            "workers": 1,
        },
    )

    stages = {line.split()[0] for line in dvc(repo, "stage", "list").splitlines() if line.strip()}
    for corpus in ("cremad", "ave", "ucf101"):
        for stage in ("synth", "index", "frames", "spectrograms", "shards_raw"):
            assert f"{stage}@{corpus}" in stages, (stage, corpus, sorted(stages))
    assert {s for s in stages if s.startswith(("faces@", "features@", "shards_cached@"))} == {
        "faces@cremad",
        "features@cremad",
        "shards_cached@cremad",
    }
    ran = stages_ran(dvc(repo, "repro", "shards_raw@ave"))
    assert ran[:2] == ["synth@ave", "index@ave"] and ran[-1] == "shards_raw@ave", ran
    meta = json.loads((repo / "data" / "ave" / "shards" / "raw" / "meta.json").read_text())
    assert meta["corpus"] == "ave" and meta["num_classes"] == 28
    assert meta["fields"]["frames.npy"]["shape"] == [4, 32, 32, 3]  # the corpus's 4 frames, params' size


def test_an_installed_corpus_plug_in_runs_under_dvc_and_a_generator_edit_reruns_only_synth(tmp_path):
    """The example plug-in of docs/corpora/adding.md, installed beside mlbpipe, named under `corpora` and `synth`
    in params.yaml: `dvc repro` synthesizes and prepares it. Editing a generator then reruns the stand-ins only:
    they write the same files, so nothing downstream reruns (and no stage of a real copy depends on them)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    env = with_site(install_example(tmp_path / "site"))
    repo = copy_repo(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    set_params(
        repo / "params.yaml",
        {
            "corpora": {"tones": {"root": "data/tones/synthetic"}},
            "synth": {"tones": {"groups": 4}},
            "frames": {"size": 32},
            "workers": 1,
        },
    )
    ran = stages_ran(dvc(repo, "repro", "shards_raw@tones", env=env))
    assert ran[:2] == ["synth@tones", "index@tones"] and ran[-1] == "shards_raw@tones", ran
    meta = json.loads((repo / "data" / "tones" / "shards" / "raw" / "meta.json").read_text())
    assert meta["corpus"] == "tones" and meta["label_names"] == ["low", "high"]

    with open(repo / "pipeline" / "standins" / "common.py", "a") as f:
        f.write("\n# an edit to the code every generator shares\n")
    assert stages_ran(dvc(repo, "repro", "shards_raw@tones", env=env)) == ["synth@tones"]


TINY_ALL = {
    "synth": {
        "cremad": {"clips": 24, "actors": 12, "width": 160, "height": 120}
    },  # MTCNN needs faces >= 40 px
    "frames": {"size": 32},
    "workers": 1,
    "device": "cpu",
    "faces": {"fps": 1, "crop_size": 64},
    "features": {"effb2": {"image_size": 64}},
    "train": {
        "fusion": "late-linear",
        "patience": 2,
        "raw": {"size": "tiny", "epochs": 2, "batch_size": 8},
        "cached": {"size": "tiny", "epochs": 2, "batch_size": 8, "lr": 0.001},
    },
    "runs": {"seeds": [0], "raw": ["joint", "video-only"], "cached": ["joint"]},
    "protocol": {
        "methods": "joint,mlb",  # the first run adds Uni-Pre and Ensemble as docs/demo.md does
        "trials": 2,
        "folds": "1,2",
        "train": {"epochs": 1, "size": "tiny", "batch_size": 8},
    },
}


def test_whole_pipeline_end_to_end_then_only_mlb_reruns_for_a_new_alpha(tmp_path):
    """synth -> ... -> train (both paths) -> compare -> report; then `dvc exp run -S train.param.mlb.alpha=...`
    reruns only MLB's runs (and the protocol for a pinned value), and a method added to a list only its runs."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = copy_repo(tmp_path)
    set_params(repo / "params.yaml", TINY_ALL)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "tiny"], cwd=repo, check=True)

    before = _workspace_files(repo)
    # the quoting docs/demo.md gives a comma list (unquoted, DVC would take it for a sweep); Uni-Pre and Ensemble
    # start from each encoder trained alone
    first = dvc(repo, "exp", "run", "-S", "protocol.methods='joint,mlb,uni-pre-finetuned,ensemble'")
    undeclared = [f for f in sorted(_workspace_files(repo) - before) if not _declared(f, _stage_outs(repo))]
    assert not undeclared, f"stages wrote files that no stage declares in outs: {undeclared}"
    stages = [s.split("@")[0] for s in stages_ran(first)]
    for stage in (
        "synth",
        "index",
        "shards_raw",
        "faces",
        "features",
        "shards_cached",
        "train_raw",
        "train_raw_mlb",
        "train_cached",
        "train_cached_mlb",
        "compare",
        "folds",
        "tune",
        "compare_tuned",
        "report",
    ):
        assert stage in stages, stage
    runs = repo / "runs"
    table = (runs / "compare.md").read_text()
    for method in ("joint", "mlb", "video-only"):
        assert f"| raw | {method} | late-linear | 1 |" in table
    assert "| cached | mlb | late-linear | 1 |" in table
    assert (runs / "figures" / "fig3_accuracy_cached.png").is_file() and (
        runs / "figures" / "report.md"
    ).is_file()
    meta = (repo / "data" / "cremad" / "shards" / "cached" / "meta.json").read_text()
    assert '"random_init": true' in meta  # the demo's extractors say what they are

    mlb_run = runs / "raw" / "mlb" / "late-linear" / "seed0" / "metrics.json"
    # alpha: auto takes the corpus's setting from meta.json (CREMA-D, raw, late-linear)
    assert json.loads(mlb_run.read_text())["method_params"] == {"alpha": 0.5, "beta_max": 10.0}

    # the protocol: equal-budget tuning on validation, then the comparison reading the tuned settings
    tuned = yaml.safe_load((repo / "protocol" / "tuned_params.yaml").read_text())["raw"]
    assert {m: v["late-linear"]["trials"] for m, v in tuned.items()} == {
        "joint": 2,
        "mlb": 2,
        "uni-pre-finetuned": 2,
    }
    # Uni-Pre and Ensemble: each fold's encoders trained alone first, then read by both (ensemble trains nothing)
    for fold in (1, 2):
        uni_pre = json.loads(
            (repo / f"protocol/runs/raw/uni-pre-finetuned/late-linear/fold{fold}/run.json").read_text()
        )
        alone = [f"{m}=protocol/runs/raw/{m}-only/late-linear/fold{fold}" for m in ("audio", "video")]
        assert uni_pre["config"]["init_encoders"] == ",".join(alone)
        assert (repo / f"protocol/runs/raw/ensemble/late-linear/fold{fold}/test_predictions.json").is_file()
    # the folds: their own splits and shards, the corpus's per-clip work computed once
    for fold in (1, 2):
        folder = repo / "data" / "cremad" / "folds" / str(fold)
        fold_meta = json.loads((folder / "shards" / "raw" / "meta.json").read_text())
        assert fold_meta["config"]["protocol"] == f"speaker-random-{fold}"
        assert (folder / "shards" / "cached" / "meta.json").is_file() and not (folder / "work").exists()
    tuned_mlb = json.loads((repo / "protocol/runs/raw/mlb/late-linear/fold1/run.json").read_text())
    assert tuned_mlb["method_params"] == tuned["mlb"]["late-linear"]["method_params"]
    stats = (repo / "protocol" / "runs" / "compare_stats.md").read_text()
    for method, baseline in (("mlb", "joint"), ("mlb", "ensemble"), ("mlb", "uni-pre-finetuned")):
        assert f"| raw | late-linear | {method} | {baseline} | 2 |" in stats, (method, baseline)

    assert stages_ran(dvc(repo, "repro")) == []
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "lock"], cwd=repo, check=True)
    alpha, pin = "train.param.mlb.alpha=1.0", "+protocol.train.param.mlb.alpha=2.0"
    rerun = stages_ran(dvc(repo, "exp", "run", "-S", alpha, "-S", pin))
    mlb_stages = ["train_cached_mlb@0", "train_raw_mlb@0"]  # MLB's settings are one for both input paths
    assert sorted(rerun) == ["compare", "compare_tuned", "report", *mlb_stages, "tune"], rerun
    assert json.loads(mlb_run.read_text())["method_params"] == {"alpha": 1.0, "beta_max": 10.0}
    cached_mlb = runs / "cached" / "mlb" / "late-linear" / "seed0" / "metrics.json"
    assert json.loads(cached_mlb.read_text())["method_params"]["alpha"] == 1.0
    tuned = yaml.safe_load((repo / "protocol" / "tuned_params.yaml").read_text())["raw"]["mlb"]["late-linear"]
    assert tuned["method_params"]["alpha"] == 2.0  # pinned by hand: not searched

    # a method added to a list trains only its own runs (the lists are in no training stage's params)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "alpha"], cwd=repo, check=True)
    rerun = stages_ran(dvc(repo, "exp", "run", "-S", "runs.raw=[joint,video-only,multi-loss]"))
    assert sorted(rerun) == ["compare", "report", "train_raw@multi-loss-0"], rerun
