"""The corpus registry: `get_corpus(name)` gives the plug-in of a corpus (pipeline.corpora.base.Corpus).

The built-in corpora are packages of this folder, imported on first use (so importing the registry costs
nothing); any other corpus registers itself with `register_corpus(corpus_object)`, from a module of its
own or from a test. This is the only place where corpora are listed.
"""

from __future__ import annotations

import importlib

from pipeline.corpora.base import Corpus, CorpusError

BUILTIN = ("cremad", "ave", "ucf101")  # packages pipeline/corpora/<name>/, each with a module-level `CORPUS`

_registered: dict[str, Corpus] = {}


def register_corpus(corpus: Corpus) -> Corpus:
    """Make `corpus` available by its name to `get_corpus`, the command line and the stages."""
    if not isinstance(corpus, Corpus):
        raise TypeError(f"register_corpus takes a pipeline.corpora.base.Corpus, got {type(corpus).__name__}")
    _registered[corpus.name] = corpus
    return corpus


def get_corpus(name: str) -> Corpus:
    """The corpus registered as `name` (a built-in one is imported on first use)."""
    if name not in _registered and name in BUILTIN:
        register_corpus(importlib.import_module(f"{__name__}.{name}").CORPUS)
    if name not in _registered:
        raise CorpusError(f"unknown corpus {name!r}; choose one of {', '.join(corpus_names())}")
    return _registered[name]


def corpus_names() -> list[str]:
    """Every corpus that `get_corpus` knows: the built-in ones and those registered since."""
    return sorted(set(BUILTIN) | set(_registered))


__all__ = ["Corpus", "CorpusError", "corpus_names", "get_corpus", "register_corpus"]
