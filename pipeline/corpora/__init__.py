"""The corpus registry: `get_corpus(name)` gives the plug-in of a corpus (pipeline.corpora.base.Corpus).

The built-in corpora are packages of this folder, imported on first use (so importing the registry costs
nothing); a corpus from outside is a package installed beside mlbpipe that names its `Corpus` object in the
entry-point group `mlbpipe.corpora` (docs/corpora/adding.md), loaded when its name is first asked for; a test
or a notebook may also call `register_corpus(corpus_object)`. This is the only place where corpora are
listed. Their synthetic stand-ins have a registry of their own, beside this one (pipeline.standins).
"""

from __future__ import annotations

from importlib.metadata import EntryPoint

from pipeline.corpora.base import Corpus, CorpusError
from pipeline.plugins import Registry

# packages pipeline/corpora/<name>/, each with a module-level `CORPUS`
BUILTIN = ("cremad", "ave", "ucf101", "generic", "vggsound", "kinetics_sounds")
# the entry-point group in which an installed package names its corpus: NAME = "module:attr"
ENTRY_POINTS = "mlbpipe.corpora"

_corpora = Registry("corpus", Corpus, __name__, BUILTIN, "CORPUS", ENTRY_POINTS, CorpusError)


def register_corpus(corpus: Corpus) -> Corpus:
    """Make `corpus` available by its name to `get_corpus`, the command line and the stages."""
    return _corpora.register(corpus)


def unregister_corpus(name: str) -> None:
    """Forget a corpus `register_corpus` made available (e.g. a test's, once the test is done)."""
    _corpora.unregister(name)


def get_corpus(name: str) -> Corpus:
    """The corpus registered as `name` (a built-in or outside one is loaded on first use). Raises CorpusError
    for an unknown name and for an outside plug-in that does not load, naming its package and the fix."""
    return _corpora.get(name)


def corpus_for(name: str, params: dict | None = None, where: str = "params.yaml") -> Corpus:
    """The corpus `name` as params.yaml sets it up: `corpora.<name>.corpus` names the corpus it is (default:
    `name` itself; e.g. `generic`) and `corpora.<name>.layout` its layout settings, so that a user's own
    corpus is named by the user (docs/corpora/adding.md). Without either, `get_corpus(name)`."""
    section = ((params or {}).get("corpora") or {}).get(name) or {}
    if not isinstance(section, dict):
        raise CorpusError(f"{where}: corpora.{name} must be a mapping, got {section!r}")
    kind = section.get("corpus", name)
    settings = section.get("layout")
    if kind == name and settings is None:
        return get_corpus(name)
    if not isinstance(settings, dict | None):
        raise CorpusError(f"{where}: corpora.{name}.layout must be a mapping of settings, got {settings!r}")
    return get_corpus(str(kind)).configured(name, settings or {}, where)


def corpus_names() -> list[str]:
    """Every corpus that `get_corpus` knows: the built-in ones, the installed plug-ins (by name, not loaded) and
    those registered since."""
    return _corpora.names()


def corpus_entry_point(name: str) -> EntryPoint | None:
    """The entry point of the installed package that provides corpus `name` (None: not an outside plug-in)."""
    return _corpora.outside(name)


__all__ = [
    "Corpus",
    "CorpusError",
    "corpus_entry_point",
    "corpus_for",
    "corpus_names",
    "get_corpus",
    "register_corpus",
    "unregister_corpus",
]
