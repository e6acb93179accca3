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

BUILTIN = ("cremad", "ave", "ucf101")  # packages pipeline/corpora/<name>/, each with a module-level `CORPUS`
# the entry-point group in which an installed package names its corpus: NAME = "module:attr"
ENTRY_POINTS = "mlbpipe.corpora"

_corpora = Registry("corpus", Corpus, __name__, BUILTIN, "CORPUS", ENTRY_POINTS, CorpusError)


def register_corpus(corpus: Corpus) -> Corpus:
    """Make `corpus` available by its name to `get_corpus`, the command line and the stages."""
    return _corpora.register(corpus)


def get_corpus(name: str) -> Corpus:
    """The corpus registered as `name` (a built-in or outside one is loaded on first use). Raises CorpusError
    for an unknown name and for an outside plug-in that does not load, naming its package and the fix."""
    return _corpora.get(name)


def corpus_names() -> list[str]:
    """Every corpus that `get_corpus` knows: the built-in ones, the installed plug-ins (by name, not loaded) and
    those registered since."""
    return _corpora.names()


def corpus_entry_point(name: str) -> EntryPoint | None:
    """The entry point of the installed package that provides corpus `name` (None: not an outside plug-in)."""
    return _corpora.outside(name)


__all__ = ["Corpus", "CorpusError", "corpus_entry_point", "corpus_names", "get_corpus", "register_corpus"]
