"""Replay the regression corpus: every input that ever broke a parser, one file each.

``corpus/<parser>/<what-it-is>`` holds the raw bytes given to the parser named in
`tests.fuzz.contracts.CONTRACTS` (text parsers get them decoded as UTF-8, undecodable bytes
kept as surrogates). Add a file whenever a fuzz run finds a new failure, before fixing it.
"""

from __future__ import annotations

import pytest

from .contracts import CONTRACTS, CORPUS, holds

ENTRIES = sorted(path for path in CORPUS.glob("*/*") if path.is_file())


def test_every_corpus_directory_names_a_parser():
    assert {path.parent.name for path in ENTRIES} <= set(CONTRACTS)


@pytest.mark.parametrize("path", ENTRIES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_entry_keeps_the_contract(path):
    holds(CONTRACTS[path.parent.name], path.read_bytes())
