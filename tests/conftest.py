"""Shared test settings: few threads (CI has 2 cores), no network, deterministic torch."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# --- synthetic CREMA-D corpora (pipeline.corpora.cremad.synth), generated once per test session --------------------
import pytest


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory):
    """A tiny synthetic CREMA-D corpus: 12 good clips (2 per emotion, 12 actors from all three VAVL
    partition-1 splits), 480x360 at 30 fps, seed 0, default cues. Returns its root Path. Read only: copy it
    before changing anything in it."""
    from pipeline.corpora.cremad.synth import SynthConfig, synth_cremad

    out = tmp_path_factory.mktemp("synth_corpus")
    synth_cremad(out, SynthConfig(clips=12, seed=0, progress=False))
    return out


@pytest.fixture(scope="session")
def synth_corpus_defects(tmp_path_factory):
    """`synth_corpus`'s 12 good clips (byte-identical) plus every planted defect, listed with the expected
    reason code in ROOT/synth_defects.json. Returns its root Path. Read only; make unreadable-permission
    cases on a copy (chmod) in the test that needs them."""
    from pipeline.corpora.cremad.synth import SynthConfig, synth_cremad

    out = tmp_path_factory.mktemp("synth_corpus_defects")
    synth_cremad(out, SynthConfig(clips=12, seed=0, progress=False, with_defects=True))
    return out
