"""benchmarks.camvid's bookkeeping: seeds per row, run folders, averages over seeds and the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import camvid


def test_rows_run_every_seed_unless_they_carry_their_own():
    assert camvid._seeds("G", [42, 7, 3]) == [42, 7, 3]
    assert camvid._seeds("N", [42, 7, 3]) == [7]  # N is G's recipe with seed 7 in its arguments
    assert camvid._folder(Path("w"), "run", "G", 42) == Path("w/run-G")  # the default seed keeps the old folder names
    assert camvid._folder(Path("w"), "export", "G", 7) == Path("w/export-G-s7")


def test_aggregate_averages_classes_and_keeps_the_spread():
    runs = [
        {"Car": 0.5, "Pole": 0.4, "mean": 0.7},
        {"Car": 0.7, "Pole": 0.6, "mean": 0.8},
        {"Car": 0.6, "Pole": 0.2, "mean": 0.9},
    ]
    agg = camvid.aggregate(runs)
    assert agg["Car"] == pytest.approx(0.6) and agg["Pole"] == pytest.approx(0.4)
    assert (agg["mean"], agg["min"], agg["max"], agg["n"]) == (pytest.approx(0.8), 0.7, 0.9, 3)


def test_table_has_a_line_per_row_and_variant_with_seeds_and_spread():
    one = camvid.aggregate([{"Car": 0.5, "mean": 0.7}])
    three = camvid.aggregate([{"Car": 0.5, "mean": 0.7}, {"Car": 0.7, "mean": 0.8}, {"Car": 0.6, "mean": 0.9}])
    rows = {
        "P": ({"label": "plain", "train_min": 7.0, "fp32": one}, []),
        "G": ({"label": "fit", "train_min": 3.0, "fp32": three, "int8": three}, []),
    }
    lines = camvid.table_lines(rows)
    assert lines[0] == "| row | change | seeds | Car | mean IoU | min-max over seeds | train min |"
    assert lines[2] == "| P | plain | 1 | 0.500 | **0.700** |  | 7.0 |"
    assert lines[3] == "| G | fit | 3 | 0.600 | **0.800** | 0.700-0.900 | 3.0 |"
    assert lines[4].startswith("| G int8 | fit | 3 |") and len(lines) == 5


def test_row_a_is_the_row_fit_resolves_its_defaults_to(tmp_path):
    """A (fit's defaults on crops) reuses the row whose arguments fit resolves to the same configuration; the
    rows pinned at batch 8 are not it, since the default batch on crops is 4, nor Q, pinned at fastai's decoder
    without norm, since the default is --decoder-norm batch."""
    from benchmarks.camvid import RECIPES, _resolved, _same_as

    same = _same_as("A", tmp_path)
    assert same is not None and same != "A"
    assert _resolved(RECIPES[same][0]) == _resolved(RECIPES["A"][0])
    assert _resolved(RECIPES["G"][0])["bs"] == 8 and _resolved(RECIPES["A"][0])["bs"] == 4
    assert (
        same == "DB"
        and _resolved(RECIPES["Q"][0])["decoder_norm"] == "none"
        and _resolved(RECIPES["A"][0])["decoder_norm"] == "batch"
    )
