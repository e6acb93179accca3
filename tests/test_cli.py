"""The command line: every command answers --help showing every default and choice, train / compare / tune share
their training options, errors are one line, --param and --params mean the same in every command, the
version prints, doctor reports."""

from __future__ import annotations

import json
import re

import pytest
import typer
import yaml
from typer.testing import CliRunner

from mlb.train.config import TrainConfig
from pipeline import __version__
from pipeline.cli import app

pytestmark = pytest.mark.integration

runner = CliRunner()


def _command_paths(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, cmd in group.commands.items():
        paths.append(prefix + (name,))
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click: no isinstance on click.Group)
            paths.extend(_command_paths(cmd, prefix + (name,)))
    return paths


def test_every_command_has_help():
    root = typer.main.get_command(app)
    paths = _command_paths(root)
    assert {("synth",), ("synth", "cremad"), ("prepare",), ("train",), ("doctor",), ("demo",)} <= set(paths)
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_unknown_command_exits_2():
    result = runner.invoke(app, ["synth", "no-such-corpus", "out"])
    assert result.exit_code == 2


def test_convert_effb2_writes_safetensors_that_load_to_the_onnx_features(tmp_path):
    import numpy as np
    from helpers.effb2 import export_onnx, seeded_b2

    from pipeline.compute.extractors import EffNetB2Config, EffNetB2Extractor

    onnx_path = export_onnx(seeded_b2(7, 96), tmp_path / "enet_b2_8_best.onnx", 96)
    out = tmp_path / "enet_b2_8_best.safetensors"
    result = runner.invoke(app, ["convert-effb2", str(onnx_path), str(out)])
    assert result.exit_code == 0, result.output
    crops = np.random.default_rng(0).integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    features = [
        EffNetB2Extractor(EffNetB2Config(weights=str(path), image_size=64), "cpu").extract(crops)
        for path in (onnx_path, out)
    ]
    np.testing.assert_array_equal(features[0], features[1])
    refused = runner.invoke(app, ["convert-effb2", str(tmp_path / "missing.onnx"), str(out)])
    assert refused.exit_code == 2 and "no such file" in refused.output


def test_doctor_flags_a_folder_that_is_not_cremad(tmp_path):
    result = runner.invoke(app, ["doctor", "--corpus", "cremad", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "AudioWAV" in result.output and "package torch" in result.output


def test_doctor_accepts_a_cremad_layout(tmp_path):
    for folder, name in (("AudioWAV", "1001_DFA_ANG_XX.wav"), ("VideoFlash", "1001_DFA_ANG_XX.flv")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(b"\0" * 2048)
    (tmp_path / "VideoDemographics.csv").write_text("ActorID,Age,Sex,Race,Ethnicity\n")
    result = runner.invoke(app, ["doctor", "--corpus", "cremad", "--root", str(tmp_path)])
    assert "fail" not in result.output, result.output
    assert result.exit_code == 0


def test_doctor_names_lfs_stubs(tmp_path):
    for folder, name in (("AudioWAV", "1001_DFA_ANG_XX.wav"), ("VideoFlash", "1001_DFA_ANG_XX.flv")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(
            b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n"
        )
    result = runner.invoke(app, ["doctor", "--corpus", "cremad", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "git lfs pull" in result.output


def test_doctor_root_needs_a_corpus_and_an_unknown_corpus_is_named(tmp_path):
    result = runner.invoke(app, ["doctor", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "--corpus" in result.output
    result = runner.invoke(app, ["doctor", "--corpus", "nope", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "unknown corpus 'nope'" in result.output


def test_only_the_command_line_imports_typer():
    """The library layers hold no typer code (the import-linter contract in CI checks the same)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import pipeline.prepare, pipeline.corpora.cremad, pipeline.stages.shards_cached, mlb.train, mlb.analysis.report\n"
        "import pipeline.standins.cremad\n"
        "assert 'typer' not in sys.modules, [m for m in sys.modules if m.startswith('typer')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- help: every default and choice, the same for train, compare and tune ---------------------------------


def _help(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def _options(*command: str) -> dict[str, str]:
    """{--option: its help text, default included}, parsed from `--help` (entries start with two spaces and a
    dash; continuation lines are indented further), whitespace (and so line wrapping) removed."""
    entries: dict[str, str] = {}
    current = None
    for line in _help(*command).split("Options:", 1)[1].splitlines():
        if line.startswith("  -"):
            current = line.split()[0]
            entries[current] = line.strip()[len(current) :]
        elif current is not None:
            entries[current] += line
    return {name: "".join(text.split()) for name, text in entries.items()}


def _default(text: str) -> str | None:
    match = re.search(r"\[default:(.*?)\](?:\[|$)", text)
    return match.group(1) if match else None


TRAINING_COMMANDS = (("train",), ("compare",), ("tune",))


def test_train_help_shows_the_defaults_of_the_dataclass():
    options = _options("train")
    assert _default(options["--epochs"]) == "100" and _default(options["--size"]) == "paper"
    assert "<tiny|small|paper>" in options["--size"] and "<raw|cached>" in options["--features"]
    assert _default(options["--batch-size"]) == "(32raw,8cached)" and _default(options["--method"]) == "mlb"


def test_train_help_shows_grad_clip_norm_with_every_methods_own_clip():
    """--grad-clip-norm says what 0 does, and its default names every method whose class clips (the value
    lives on the class, Balancer.grad_clip_norm; the help text must not drift from it)."""
    from mlb.balancing import METHODS

    text = _options("train")["--grad-clip-norm"]
    assert "0turnsamethod'sclippingoff" in text and "<float>" in text
    assert _default(text) == "(themethod's:dgl40,othersnone)"
    clipping = {name: cls.grad_clip_norm for name, cls in METHODS.items() if cls.grad_clip_norm is not None}
    assert clipping and all(f"{name}{value:g}" in _default(text) for name, value in clipping.items())


def test_train_compare_and_tune_share_their_training_options_and_defaults():
    """The options made from TrainConfig are the same in the three commands, with the same help and default;
    compare and tune only replace method / fusion / seed by their lists."""
    helps = {command[0]: _options(*command) for command in TRAINING_COMMANDS}
    shared = set(helps["train"]) & set(helps["compare"]) & set(helps["tune"])
    for option in ("--epochs", "--size", "--patience", "--batch-size", "--lr", "--weight-decay", "--param",
                   "--params", "--section", "--features", "--device", "--in-memory"):  # fmt: skip
        assert option in shared, option
    for option in shared - {"--param", "--data", "--out", "--help"}:
        texts = {name: options[option] for name, options in helps.items()}
        assert len(set(texts.values())) == 1, (option, texts)
    assert _default(helps["compare"]["--epochs"]) == _default(helps["tune"]["--epochs"]) == "100"
    assert set(helps["train"]) - set(helps["compare"]) >= {"--method", "--fusion", "--seed", "--resume"}
    assert {"--method", "--fusion", "--resume"}.isdisjoint(helps["tune"])


def test_every_option_has_a_help_and_shows_its_default():
    """Every option of every command has a help text and shows its default (or says it is required); only
    plain on/off flags (off unless given) show none."""
    root = typer.main.get_command(app)
    for path in _command_paths(root):
        command = root
        for name in path:
            command = command.commands[name]
        if hasattr(command, "commands"):
            continue
        options = _options(*path)
        for param in command.params:
            if not param.opts or param.opts[0] not in options:  # arguments; --help
                continue
            name, text = param.opts[0], options[param.opts[0]]
            if path[0] in ("train", "compare", "tune", "prepare", "report", "doctor"):
                assert param.help, (path, name)
            flag = getattr(param, "is_flag", False) and not param.secondary_opts
            assert flag or _default(text) is not None or "[required]" in text, (path, name, text)


def test_every_help_fits_80_columns():
    """On a terminal 80 columns wide no line of any --help runs over (a long metavar or path would)."""
    root = typer.main.get_command(app)
    for path in [(), *_command_paths(root)]:
        text = runner.invoke(app, [*path, "--help"], terminal_width=80).output
        assert all(len(line) <= 80 for line in text.splitlines()), (path, text)


def test_a_value_with_a_shape_says_what_to_write():
    """A comma-separated list shows its item and `,...`, a choice the command checks itself its values as typer
    shows a choice, a name among many or a path that may be a URL a placeholder: never a bare <str>."""
    from mlb.analysis.stats import UNITS
    from pipeline.cli.common import choice
    from pipeline.cli.prepare import ENGINES
    from pipeline.stages.spectrograms import KINDS

    expected = {
        ("train",): {"--method": "METHOD", "--fusion": "FUSION", "--data": "PATH|URL", "--device": "DEVICE",
                     "--init-encoders": "MODALITY=RUN,..."},
        ("compare",): {"--methods": "METHOD,...", "--fusions": "FUSION,...", "--seeds": "SEED,...",
                       "--folds": "K,...", "--resample": choice(UNITS), "--tuned": "FILE"},
        ("tune",): {"--methods": "METHOD,...", "--fusions": "FUSION,..."},
        ("prepare",): {"--stages": "STAGE,...", "--folds": "K,...", "--engine": choice(ENGINES),
                       "--spec": choice(KINDS), "--params": "FILE"},
        ("report",): {"--fusion": "FUSION"},
    }  # fmt: skip
    for command, metavars in expected.items():
        options = _options(*command)
        for option, metavar in metavars.items():
            assert options[option].startswith(metavar), (command, option, options[option])
    root = typer.main.get_command(app)
    for path in _command_paths(root):  # any list, in any command
        command = root
        for name in path:
            command = command.commands[name]
        if hasattr(command, "commands"):
            continue
        for option, text in _options(*path).items():
            if "comma-separated" in text:
                assert re.match(r"[A-Z]+,\.\.\.", text), (path, option, text)


def test_prepare_help_lists_the_protocol_choices():
    from pipeline.corpora import corpus_names, get_corpus

    text = _options("prepare")["--protocol"]
    for name in corpus_names():
        assert "".join(f"{name}:{' | '.join(get_corpus(name).protocols)}".split()) in text, (name, text)


def test_the_method_and_fusion_helps_name_every_method_and_fusion_head():
    from mlb.balancing import METHODS
    from mlb.models.fusion import FUSIONS

    options = _options("train")
    assert all(
        f"{method}," in options["--method"] or f"{method};" in options["--method"] for method in METHODS
    )
    assert all(fusion in options["--fusion"] for fusion in FUSIONS)


# --- errors: one line, exit 2 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "command", "message"),
    [
        (["train", "--epochs", "ten", "--data", "d", "--out", "o"], "train", "'--epochs'"),
        (["train", "--nope"], "train", "No such option: --nope"),
        (["train", "--data", "d"], "train", "Missing option '--out'"),
        (
            ["compare", "--out", "o", "--features", "video"],
            "compare",
            "'video' is not one of 'raw', 'cached'",
        ),
        (["tune", "--data", "d", "--out", "o", "--trials", "0"], "tune", "'--trials'"),
        (["synth", "cremad"], "synth cremad", "Missing argument 'out'"),
        (["no-such-command"], "", "No such command 'no-such-command'"),
    ],
)
def test_usage_errors_print_one_line_like_every_other_error(args, command, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output  # no Usage block, no box
    prefix = " ".join(["mlbpipe", *command.split()]) + ": error: "
    assert lines[0].startswith(prefix) and message in lines[0], lines


# --- --param: one spelling, refused when it would do nothing ------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from helpers.shards import write_shard_folder

    out = tmp_path_factory.mktemp("cli_data")
    write_shard_folder(out / "shards" / "raw", "raw")
    return out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["train", "--method", "mlb", "--param", "joint.probe_unimodal=false"],
            "this run trains mlb, not joint",
        ),
        (["train", "--param", "mlb.alfa=1"], "mlb.alfa=1: unknown setting; mlb takes alpha, beta_max, eps"),
        (["train", "--param", "alpha=1"], "is not METHOD.KEY=VALUE"),
        (["train", "--method", "nope"], "'nope': unknown method"),
        (["compare", "--methods", "joint,mlb", "--param", "ogm-ge.alpha=1"], "runs joint, mlb, not ogm-ge"),
        (["compare", "--methods", "joint,mlb", "--param", "mlb.alfa=auto"], "unknown setting; mlb takes"),
        (["compare", "--methods", "joint,nope"], "'nope': unknown method"),
        (["compare", "--fusions", "late-linear,mid"], "'mid': unknown fusion head"),
        (["tune", "--methods", "mlb", "--param", "joint.probe_unimodal=false"], "searches mlb, not joint"),
        (["tune", "--methods", "mlb", "--param", "mlb.beta=2"], "unknown setting; mlb takes"),
    ],
)
def test_a_wrong_method_setting_is_refused_before_any_run(shards, tmp_path, args, message):
    out = tmp_path / "out"
    result = runner.invoke(app, [*args, "--features", "raw", "--data", str(shards), "--out", str(out)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.startswith(f"mlbpipe {args[0]}: error: "), result.output
    assert not out.exists(), sorted(out.iterdir())  # refused before any work: not even the folder is made


def test_params_file_then_options_then_param(shards, tmp_path):
    """`--params FILE`: the section's keys, its raw subsection over them, its `param` as method settings; the
    options given win over the file, --param over the file's `param`, `auto` leaves a key to the corpus."""
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "protocol": {
                    "train": {
                        "size": "tiny", "epochs": 1, "max_steps": 1, "batch_size": 2, "device": "cpu",
                        "dvclive": False, "raw": {"batch_size": 4, "lr": "5e-4"},
                        "param": {"mlb": {"alpha": 2.0, "beta_max": 3.0, "eps": 0.01}, "joint": {}},
                    }
                }
            }
        )
    )  # fmt: skip
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--params", str(params), "--section", "protocol.train", "--features",
                                 "raw", "--data", str(shards), "--out", str(run), "--epochs", "2",
                                 "--param", "mlb.beta_max=5", "--param", "mlb.eps=auto"])  # fmt: skip
    assert result.exit_code == 0, result.output
    recorded = json.loads((run / "run.json").read_text())
    config = recorded["config"]
    assert (config["size"], config["max_steps"], config["batch_size"], config["lr"]) == ("tiny", 1, 4, 5e-4)
    assert config["epochs"] == 2 and config["patience"] == TrainConfig.patience  # option > file > dataclass
    assert recorded["method_params"] == {"alpha": 2.0, "beta_max": 5}  # eps: auto, the method's default


def test_tune_fixes_what_is_given_and_searches_the_rest(shards, tmp_path):
    out = tmp_path / "tune"
    result = runner.invoke(app, ["tune", "--features", "raw", "--data", str(shards), "--out", str(out),
                                 "--methods", "mlb", "--trials", "1", "--size", "tiny", "--epochs", "1",
                                 "--batch-size", "8", "--device", "cpu", "--lr", "0.002",
                                 "--param", "mlb.alpha=1.5"])  # fmt: skip
    assert result.exit_code == 0, result.output
    best = yaml.safe_load((out / "best_params.yaml").read_text())["raw"]["mlb"]["late-linear"]
    assert best["lr"] == 0.002 and best["method_params"]["alpha"] == 1.5
    assert "alpha=1.5" in result.output and "lr=0.002" in result.output
    assert set(best["method_params"]) == {"alpha", "beta_max"}  # beta_max searched


# The libraries a command imports when it runs, never to show its help (each costs 0.1-1.5 s to import)
HEAVY = ("torch", "optuna", "matplotlib", "dvc", "dvclive", "scipy", "h5py", "ray", "boto3", "transformers")


def test_help_imports_no_heavy_library():
    """`mlbpipe --help` and every command's --help, in a fresh interpreter: none of HEAVY gets imported."""
    import subprocess
    import sys

    commands = [[]] + [[c.name] for c in typer.main.get_command(app).commands.values()]
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom pipeline.cli import app\n"
        f"for args in {commands!r}:\n"
        "    result = CliRunner().invoke(app, [*args, '--help'])\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_command_list_gives_each_command_one_whole_line_at_80_columns():
    listing = CliRunner().invoke(app, ["--help"], terminal_width=80).output
    commands = listing.split("Commands:\n", 1)[1].splitlines()
    names = {c.name for c in typer.main.get_command(app).commands.values()}
    assert {line.split()[0] for line in commands if line.strip()} == names
    for line in commands:
        assert len(line) <= 80 and "..." not in line and line.rstrip().endswith("."), line
