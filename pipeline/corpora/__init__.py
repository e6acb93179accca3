"""Corpus-specific code, one module per corpus: file naming, id parsing, known problems, protocols."""
