"""benchmarks.camvid's bookkeeping: its rows, ours beside the published table, per class, under the shifts."""

from __future__ import annotations

from benchmarks import camvid


def _row(mean: float, variant: str = "int8") -> dict:
    iou = {"Sky": 0.9, "Pole": 0.2, "SignSymbol": 0.3, "Pedestrian": 0.4, "Void": None}
    return {"label": "x", "minutes": 19.6, "variant": variant, "iou": iou, "mean_iou": mean, "fp32": mean + 0.004,
            "pixel_acc": 0.88, "val": 0.7, "shifts": {"blur": mean * 0.9, "noise": mean * 0.8},
            "shifted": {"ratio": 0.85, "min_ratio": 0.8},
            "int8_val_ratio": 0.995 if variant == "int8" else 0.97}  # fmt: skip


def test_rows_and_the_published_table():
    assert set(camvid.ROWS) == {"plan20", "plan60", "plan60-tta", "plan60-tts", "plan60-lite0", "fixed"}
    assert camvid.ROWS["plan20"].args == ["--minutes", "20"] and "--no-plan" in camvid.ROWS["fixed"].args
    tta = camvid.ROWS["plan60-tta"]  # plan60's fit, exported with test-time flips
    assert tta.fit == "plan60" and tta.export == ("--tta", "flip") and tta.args == camvid.ROWS["plan60"].args
    tts = camvid.ROWS["plan60-tts"]  # the same fit, flips and scales 1 and 1.5
    assert tts.fit == "plan60" and tts.export[-3:] == ("--tta-scales", "1", "1.5") and tts.args == tta.args
    assert camvid.PUBLISHED["FC-DenseNet103"] == 66.9 and len(camvid.PUBLISHED) == 7


def test_tables_rank_ours_among_the_published_and_name_each_class():
    lines = camvid.tables({"plan20": _row(0.6), "plan60": _row(0.63, "fp32")})
    ranked = [ln.split(" | ")[0].strip("| *") for ln in lines[2:11]]
    assert ranked[:2] == ["SegNet", "ENet"] and ranked.index("this project, plan20") == 3  # 60.0: after FCN-8's 57.0
    assert ranked.index("this project, plan60") == 5 and ranked[-1] == "BiSeNet (720x960)"
    per_class = next(i for i, ln in enumerate(lines) if ln.startswith("| row | val mean IoU"))
    assert "| Pole | SignSymbol | Pedestrian |" in lines[per_class] and "Void" not in lines[per_class]
    assert (
        lines[per_class + 2]
        == "| plan20 | 0.700 | **0.600** | 0.604 | 0.993 (val 0.995) | 0.880 | 0.900 | 0.200 | 0.300 | 0.400 |"
    )
    assert "| plan60 | 0.700 | **0.630** | 0.634 | dropped (val 0.970) |" in lines[per_class + 3]  # int8 refused
    assert lines[-1] == "| plan60 | 0.630 | 0.567 | 0.504 | **0.850** | 0.800 |"
