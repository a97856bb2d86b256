"""benchmarks.camvid's bookkeeping: named rows, `fit`'s defaults resolved to a row, run folders, the tables."""

from __future__ import annotations

from pathlib import Path

from benchmarks import camvid


def test_rows_are_named_and_fit_resolves_to_the_row_with_its_defaults():
    assert set(camvid.ROWS) == {"plain", "flips", "affine", "standardised", "encoder", "fit"}
    from training.config import TrainConfig

    default = TrainConfig(data=Path("."), out=Path(".")).resolved_augment()
    assert (
        camvid.same_as("fit")
        in {"flip": ("flips", "standardised"), "field": ("encoder",), "affine": ("affine",)}[default]
    )
    assert camvid.same_as("plain") is None and camvid.same_as("affine") != "standardised"
    assert camvid._folder(Path("w"), "run", "affine", 42) == Path("w/run-affine")
    assert camvid._folder(Path("w"), "export", "affine", 7) == Path("w/export-affine-s7")


def test_tables_put_clean_and_shifted_side_by_side():
    def scores(clean, shifted):
        return {"clean": {"Car": clean, "mean": clean}, "dark": {"Car": shifted, "mean": shifted},
                "blur": {"Car": shifted / 2, "mean": shifted / 2}}  # fmt: skip

    row = {"label": "x", "seeds": [1, 2], "mean": scores(0.8, 0.6), "min_per_epoch": [0.5, 0.7],
           "clean": 0.8, "clean_range": [0.75, 0.85], "shifted": 0.45, "ratio": 0.45 / 0.8}  # fmt: skip
    lines = camvid.tables({"field": row})
    assert lines[0].startswith(
        "| row | seeds | clean mean IoU (min-max) | shifted mean | shifted / clean | dark | blur"
    )
    assert lines[2] == "| field: x | 2 | **0.800** (0.750-0.850) | **0.450** | 0.562 | 0.600 | 0.300 | 0.60 |"
    assert "| field | 0.800 / 0.450 |" in lines
