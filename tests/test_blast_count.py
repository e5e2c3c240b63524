"""The slide's blast-equivalent percentage with its 95% interval (``core.blast_count``)."""

from __future__ import annotations

import pytest

from napari_leukemia.core.blast_count import adjusted_percentage, blast_percentage, describe


def test_counting_interval_of_a_100_cell_differential():
    c = blast_percentage(20, 100)
    assert c["blast_pct"] == 20 and c["interval"] == "counting"
    assert 12 < c["blast_pct_low"] < 14 and 28 < c["blast_pct_high"] < 30  # about 13-29%
    assert not c["too_few_cells"]  # 13-29% holds 20% but not 10%
    assert "counting error only" in describe(c)


def test_enough_cells_tell_20_from_10_and_few_do_not():
    assert not blast_percentage(200, 1000)["too_few_cells"]
    assert blast_percentage(3, 20)["too_few_cells"]
    assert "too few cells" in describe(blast_percentage(3, 20))


def test_cross_validated_error_rates_widen_the_interval_to_hold_the_corrected_count():
    rates = {"sensitivity": 0.9, "false_positive_rate": 0.05}
    none = blast_percentage(5, 100, rates)  # a patient without blasts reads at about the false-positive rate
    assert none["blast_pct"] == 5 and none["interval"] == "counting+classifier"
    assert adjusted_percentage(5, 100, rates)[0] == pytest.approx(0.0) and none["blast_pct_low"] == 0
    some = blast_percentage(23, 100, rates)
    corrected, low, high = adjusted_percentage(23, 100, rates)
    assert corrected == pytest.approx(100 * (0.23 - 0.05) / 0.85)
    counting = blast_percentage(23, 100)
    assert some["blast_pct"] == counting["blast_pct"] == 23  # the estimate stays the count
    assert some["blast_pct_low"] == min(low, counting["blast_pct_low"])
    assert some["blast_pct_high"] == max(high, counting["blast_pct_high"])
    assert some["blast_pct_low"] < corrected < some["blast_pct_high"]
    weak = blast_percentage(23, 100, {"sensitivity": 0.5, "false_positive_rate": 0.2})  # too weak to invert
    assert weak == counting and adjusted_percentage(23, 100, {"sensitivity": 0.5, "false_positive_rate": 0.2}) is None


def test_no_cells_no_percentage():
    c = blast_percentage(0, 0)
    assert c["blast_pct"] is None and c["too_few_cells"] and describe(c) == "no leukocytes counted"
