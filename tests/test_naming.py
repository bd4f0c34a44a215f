"""naming.few: the first names of a list, then how many more."""

from __future__ import annotations

from rssc_mlflow.naming import few


def test_few_shows_the_first_names_and_counts_the_rest():
    names = [f"c{i}" for i in range(13)]
    assert few(names) == ", ".join(repr(n) for n in names[:10]) + " and 3 more"
    assert few(iter(names), 2) == "'c0', 'c1' and 11 more"  # any iterable, read once
    assert few(names, 2, show=str) == "c0, c1 and 11 more"


def test_few_adds_nothing_when_all_fit():
    assert few(["a", "b"], 2) == "'a', 'b'"
    assert few(["a"], 5, show=str) == "a"
    assert few([]) == ""
