"""Screw catalogue: defaults, CSV loading and its error messages."""

from __future__ import annotations

import pytest

from spineplan.errors import InputError
from spineplan.plan.catalogue import ScrewCatalogue


def test_default_catalogue_ranges():
    cat = ScrewCatalogue.default()
    assert cat.diameters_mm == (4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5)
    assert cat.lengths_mm == (25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 55.0, 60.0)
    assert len(cat.all_sizes()) == 64
    assert cat.has(7.5, 60) and not cat.has(8.0, 45) and not cat.has(6.5, 47)


def test_from_csv_lists_only_given_sizes(tmp_path):
    p = tmp_path / "system_x.csv"
    p.write_text("diameter_mm,length_mm,ref\n5.5,40,A1\n6.5,45,A2\n6.5,50,A3\n\n", encoding="utf-8")
    cat = ScrewCatalogue.from_csv(p)
    assert cat.name == "system_x"
    assert cat.all_sizes() == [(5.5, 40.0), (6.5, 45.0), (6.5, 50.0)]
    assert cat.has(6.5, 50) and not cat.has(5.5, 45)  # not a full grid
    assert cat.lengths_for(6.5) == (45.0, 50.0)


@pytest.mark.parametrize("text, words", [
    ("diam,len\n6,45\n", "diameter_mm"),
    ("diameter_mm,length_mm\n6.5,forty\n", "line 2"),
    ("diameter_mm,length_mm\n", "no sizes"),
    ("diameter_mm,length_mm\n0.65,4.5\n", "implausible"),
])
def test_from_csv_errors_say_what_is_wrong(tmp_path, text, words):
    p = tmp_path / "bad.csv"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=words):
        ScrewCatalogue.from_csv(p)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such screw catalogue file"):
        ScrewCatalogue.from_csv(tmp_path / "nope.csv")
