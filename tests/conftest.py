"""Shared test settings: few threads (CI has 2 cores), no network, deterministic torch; one tier per test."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# --- tiers (pyproject.toml's markers say what each holds) -----------------------------------------------
TIERS = ("e2e", "integration", "unit")  # the slowest first


def _tiers(item) -> list[str]:
    return sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS}, key=TIERS.index)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: `make test-fast` refuses an untiered test too
def pytest_collection_modifyitems(config, items):
    """A test with no tier mark or more than one is a collection error that fails the run (a serial run stops
    before any test; a collection error of an xdist worker does not stop the others): a new test cannot
    escape the tiers."""
    for item in items:
        if len(tiers := _tiers(item)) != 1:
            says = f"carries {' and '.join(tiers)}" if tiers else "has no tier"
            problem = (
                f"{item.nodeid} {says}: give it exactly one of @pytest.mark.unit, integration or e2e (or its "
                "module a pytestmark); pyproject.toml's markers say what each tier holds"
            )
            config.hook.pytest_collectreport(report=pytest.CollectReport(item.nodeid, "failed", problem, []))
    # Under pytest-xdist (`make test`) the e2e tests first: a free worker takes the next module in this order, so
    # the longest start early and small unit modules fill the end. A serial run keeps the files' order.
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: TIERS.index((_tiers(item) or ["e2e"])[0]))


# --- synthetic CREMA-D corpora (pipeline.standins.cremad), generated once per test session --------------------


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory):
    """A tiny synthetic CREMA-D corpus: 12 good clips (2 per emotion, 12 actors from all three VAVL
    partition-1 splits), 480x360 at 30 fps, seed 0, default cues. Returns its root Path. Read only: copy it
    before changing anything in it."""
    from pipeline.standins.cremad import SynthConfig, synth_cremad

    out = tmp_path_factory.mktemp("synth_corpus")
    synth_cremad(out, SynthConfig(clips=12, seed=0, progress=False))
    return out


@pytest.fixture(scope="session")
def synth_corpus_defects(tmp_path_factory):
    """`synth_corpus`'s 12 good clips (byte-identical) plus every planted defect, listed with the expected
    reason code in ROOT/synth_defects.json. Returns its root Path. Read only; make unreadable-permission
    cases on a copy (chmod) in the test that needs them."""
    from pipeline.standins.cremad import SynthConfig, synth_cremad

    out = tmp_path_factory.mktemp("synth_corpus_defects")
    synth_cremad(out, SynthConfig(clips=12, seed=0, progress=False, with_defects=True))
    return out
