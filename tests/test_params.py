"""One source for every parameter: each section of the repository's params.yaml goes into its dataclass (an
unknown key fails), the stage commands read their sections from it, and a config error names the key and
the value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlb.balancing import build_balancer
from mlb.train.config import TrainConfig
from pipeline.corpora import get_corpus
from pipeline.params import ParamsError, from_mapping, load_params, stage_sections
from pipeline.prepare import PrepareConfig, prepare_config
from pipeline.standins import get_standin

REPO = Path(__file__).resolve().parents[1]
PARAMS = load_params(REPO / "params.yaml")
CREMAD = get_corpus("cremad")


@pytest.mark.unit
@pytest.mark.parametrize("corpus", sorted(PARAMS["corpora"]))
def test_every_preparation_section_loads_into_its_dataclass(corpus):
    config = prepare_config(get_corpus(corpus), PARAMS, {}, "params.yaml")
    assert isinstance(config, PrepareConfig)
    # what the demo sets on purpose, and only that, differs from the defaults
    assert config.frames.size == PARAMS["frames"]["size"] != PrepareConfig().frames.size
    assert config.spectrograms == PrepareConfig().spectrograms
    assert Path(PARAMS["corpora"][corpus]["root"]).parts[:2] == ("data", corpus)
    assert config.index.protocol_of(get_corpus(corpus)) in get_corpus(corpus).protocols


@pytest.mark.unit
def test_the_paper_inputs_settings_in_docs_load_into_the_stage_configs(tmp_path):
    # docs/paper-inputs.md's block: VAVL's face crop and HSEmotion's B2 as faces / features settings.
    import re

    from pipeline.stages.faces import FacesConfig
    from pipeline.stages.features import FeaturesConfig

    text = (REPO / "docs" / "paper-inputs.md").read_text()
    block = yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.DOTALL).group(1))
    weights = tmp_path / "enet_b2_8_best.onnx"  # the file is only checked to exist here
    weights.write_bytes(b"")
    block["features"]["effb2"]["weights"] = str(weights)
    faces = from_mapping(FacesConfig, block["faces"], "docs/paper-inputs.md: faces")
    features = from_mapping(FeaturesConfig, block["features"], "docs/paper-inputs.md: features")
    assert (faces.crop_size, faces.box_side, faces.fps) == (224, "mean", None)
    assert 1 + 2 * faces.margin == pytest.approx(1.1 * 1.25)
    assert features.effb2.image_size == faces.crop_size == 224


@pytest.mark.unit
@pytest.mark.parametrize("corpus", sorted(PARAMS["synth"]))
def test_every_synth_section_loads_into_its_stand_in_config(corpus):
    standin = get_standin(corpus)
    config = from_mapping(standin.config, PARAMS["synth"][corpus], f"params.yaml: synth.{corpus}")
    standin.check(config)


@pytest.mark.unit
def test_the_training_sections_are_trainer_settings():
    """train (with train.raw / train.cached over it) and protocol.train hold TrainConfig keys and build a valid
    config; their `param` builds each method (auto: left out); runs.raw / runs.cached name known methods."""
    from mlb.train.config import check_methods
    from pipeline.cli.training import read_section

    for name, path in (
        ("train", "raw"),
        ("train", "cached"),
        ("protocol.train", PARAMS["protocol"]["features"]),
    ):
        values, method_params = read_section(REPO / "params.yaml", name, path)
        config = TrainConfig(data=REPO, out=REPO / "runs", **{"features": path, **values})
        config.validate()
        for method, settings in method_params.items():
            build_balancer(method, **{k: v for k, v in settings.items() if v != "auto"})
    # a key of `train` reaches every input path, unless the path's own section sets it (the demo's raw patience)
    assert read_section(REPO / "params.yaml", "train", "cached")[0]["patience"] == PARAMS["train"]["patience"]
    assert (
        read_section(REPO / "params.yaml", "train", "raw")[0]["patience"]
        == PARAMS["train"]["raw"]["patience"]
    )
    mlb = PARAMS["train"]["param"]["mlb"]  # auto (the corpus's setting from meta.json) or a number
    assert all(value == "auto" or isinstance(value, float) for value in mlb.values()), mlb
    for path in ("raw", "cached"):
        check_methods(PARAMS["runs"][path])
    check_methods(PARAMS["protocol"]["methods"].split(","))


def _stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


TRAINING_STAGES = {
    "train_raw": "raw",
    "train_raw_mlb": "raw",
    "train_cached": "cached",
    "train_cached_mlb": "cached",
}


@pytest.mark.unit
def test_each_training_stage_lists_the_params_it_reads_and_no_method_list():
    """A training stage reads params.yaml's `train` section: every key of it that applies to its input path is in
    its params (a key missing there would not rerun it), MLB's settings only in MLB's stages (a change reruns
    only MLB), and no method list (a method added reruns only its own runs)."""
    stages = _stages()
    common = sorted(set(PARAMS["train"]) - {"raw", "cached", "param"})
    for name, path in TRAINING_STAGES.items():
        stage = stages[name]
        params = set(stage["params"])
        assert "--params params.yaml" in stage["cmd"] and f"--features {path}" in stage["cmd"], name
        for key in common:
            assert f"train.{key}" in params, (name, key)
        assert f"train.{path}" in params, name
        mlb = name.endswith("_mlb")
        assert ("train.param.mlb" in params) == mlb and ("--method mlb" in stage["cmd"]) == mlb, name
        assert not {p for p in params if p.startswith("train.param")} - {"train.param.mlb"}, name
        assert not params & {"runs", "runs.raw", "runs.cached", "runs.seeds", "train"}, name
    for name in ("tune", "compare_tuned"):
        assert "--params params.yaml --section protocol.train" in stages[name]["cmd"], name
        assert {"protocol.train", "protocol"} & set(stages[name]["params"]), name


@pytest.mark.unit
def test_a_training_section_with_an_unknown_key_fails_naming_the_file_the_key_and_the_keys_taken(tmp_path):
    from pipeline.cli.training import read_section

    path = tmp_path / "p.yaml"
    cases = {
        "train.epochz: unknown key; .*p.yaml: train takes features, method,": {"train": {"epochz": 3}},
        "train.raw.sise: unknown key; .*p.yaml: train.raw takes method,": {
            "train": {"raw": {"sise": "tiny"}}
        },
        r"train.param mlb.alfa=1: unknown setting; mlb takes alpha, beta_max": {
            "train": {"param": {"mlb": {"alfa": 1}}}
        },
        "train.param 'mlbb': unknown method": {"train": {"param": {"mlbb": {"alpha": 1}}}},
        r"train.cached.param mlb.alfa=1: unknown setting": {
            "train": {"cached": {"param": {"mlb": {"alfa": 1}}}}
        },
        r"train.lr='fast': must be a number": {"train": {"lr": "fast"}},
        "no section 'protocol.train'": {"protocol": {}},
    }
    for message, params in cases.items():
        path.write_text(yaml.safe_dump(params))
        section = "protocol.train" if "protocol" in params else "train"
        with pytest.raises(ValueError, match=message):
            read_section(path, section, "raw")
    path.write_text("train:\n  lr: 5e-5\n  raw: {batch_size: 4}\n  cached: {batch_size: 2}\n")
    assert read_section(path, "train", "cached")[0] == {
        "lr": 5e-5,
        "batch_size": 2,
    }  # YAML's "5e-5": a number


@pytest.mark.unit
def test_an_unknown_key_fails_with_the_section_and_the_keys_it_takes(tmp_path):
    params = {"frames": {"sise": 96}}
    with pytest.raises(
        ParamsError, match=r"params.yaml.frames.sise: unknown key; params.yaml.frames takes fps, count, size"
    ):
        prepare_config(CREMAD, params, {}, "params.yaml")
    with pytest.raises(ParamsError, match=r"features.effb2.wieghts: unknown key"):
        prepare_config(CREMAD, {"features": {"effb2": {"wieghts": "random"}}}, {}, "p")


@pytest.mark.unit
def test_a_bad_value_names_the_key_and_the_value():
    with pytest.raises(ParamsError, match=r"frames.size=4: must be between 8 and 1024"):
        prepare_config(CREMAD, {"frames": {"size": 4}}, {}, "params.yaml")
    with pytest.raises(ParamsError, match=r"faces.jpeg_quality=10"):
        prepare_config(CREMAD, {}, {"faces.jpeg_quality": 10}, "--set")


@pytest.mark.unit
def test_a_corpus_section_lies_over_the_global_one_and_overrides_over_both():
    params = {
        "frames": {"size": 96, "count": 4},
        "corpora": {"cremad": {"frames": {"size": 64}}},
        "device": "cpu",
    }
    assert stage_sections(params, "cremad")["frames"] == {"size": 64, "count": 4}
    config = prepare_config(CREMAD, params, {"frames.count": 2}, "p")
    assert (config.frames.size, config.frames.count) == (64, 2)
    assert config.faces.device == config.features.device == "cpu"  # the top-level device reaches both stages


@pytest.mark.unit
def test_params_yaml_must_be_a_mapping(tmp_path):
    (tmp_path / "p.yaml").write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="must hold a mapping"):
        load_params(tmp_path / "p.yaml")
    with pytest.raises(ParamsError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")


@pytest.mark.unit
def test_model_sizes_agree_between_the_config_and_the_encoders():
    from mlb.models.encoders import SIZES
    from mlb.train.config import SIZES as CONFIG_SIZES

    assert tuple(SIZES) == CONFIG_SIZES


@pytest.mark.integration
def test_the_prepare_command_reads_its_sections_from_params(tmp_path, synth_corpus):
    from typer.testing import CliRunner

    from pipeline.cli import app

    params = {
        "frames": {"size": 40},
        "corpora": {"cremad": {"index": {"protocol": "speaker-random", "seed": 4}}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prepare", "cremad", "--root", str(synth_corpus), "--out", str(out),
                                      "--params", str(tmp_path / "params.yaml"), "--stages", "index,frames", "--quiet",
                                      "--set", "frames.count=2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    import h5py

    with h5py.File(out / "work" / "frames.h5") as f:
        first = next(iter(f["frames"].values()))
        assert first.shape == (2, 40, 40, 3)
    assert '"protocol": "speaker-random-4"' in (out / "corpus.json").read_text()


@pytest.mark.unit
def test_a_corpus_gives_its_own_defaults_under_params_and_refuses_input_paths_it_lacks():
    from pipeline.corpora.base import Corpus
    from pipeline.prepare import check_stages

    class RawOnly(Corpus):
        name, label_names, protocols = "rawonly", ("a", "b"), ("random",)
        stage_defaults = {"spectrograms": {"sample_rate": 16000, "kind": "stft"}, "frames": {"count": 4}}  # noqa: RUF012
        input_paths, input_paths_note = ("raw",), "its authors trained ResNets only"

        def scan(self, root):
            raise NotImplementedError

        def assign_splits(self, records, protocol, partition, seed):
            return "random"

    corpus = RawOnly()
    config = prepare_config(corpus, {"frames": {"count": 2}}, {}, "p")
    assert (config.spectrograms.sample_rate, config.spectrograms.kind, config.frames.count) == (
        16000,
        "stft",
        2,
    )
    assert check_stages(None, corpus) == ["index", "frames", "spectrograms", "shards_raw"]
    with pytest.raises(
        ValueError, match="rawonly has no cached input path, so no faces stage .*ResNets only"
    ):
        check_stages(["index", "faces"], corpus)
