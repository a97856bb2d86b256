"""Where the CamVid-layout rows lose their cars: Car recall by the photo and shade a car was painted with,
and false Car pixels by the true class (Road by its photo), for trained rows of `python -m benchmarks.camvid`.

    python -m benchmarks.camvid_cars [--work runs/camvid] [--draw 0] [--rows P G N]

The street-scene generator paints cars from three photos (coffee, rocket, chelsea) in four shades (red,
blue, light, dark) and the road from gravel or coffee in a dark grey, so a dark coffee car on a coffee
road differs from it by shape alone. Each held-out scene is drawn again from its seed with the shapes
recorded (`training.synth.make_street_scene(parts=...)`, checked equal to the file) and scored through
the served data path (serving.Segmenter, fp32) as in benchmarks.camvid. Prints a table, writes
benchmarks/results/camvid-cars-<date>.md/.json and a PNG of the recalls.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHADES = {(1.3, 0.5, 0.5): "red", (0.5, 0.6, 1.3): "blue", (1.1, 1.1, 1.1): "light", (0.4, 0.4, 0.4): "dark"}


def tally(export: Path, valid: list[Path], draw: int) -> dict:
    """Visible car pixels and those predicted Car, by 'photo shade'; false Car pixels by true class ('Road
    <photo>' for the road); Car IoU. Scenes are re-drawn from (draw, index) and must equal the files."""
    from serving import Segmenter
    from training.synth import STREET_CLASSES, make_street_scene

    car, road, void = (STREET_CLASSES.index(c) for c in ("Car", "Road", "Void"))
    seg = Segmenter.load(export, "cpu", "fp32")
    cars: dict[str, list[int]] = {}
    false: dict[str, list[int]] = {}
    tp = fp = fn = 0
    for path in valid:
        image = np.asarray(Image.open(path).convert("RGB"))
        parts: list = []
        drawn, mask = make_street_scene(
            np.random.default_rng([draw, int(path.stem.rsplit("_", 1)[1])]), *image.shape[:2], parts=parts
        )
        if not np.array_equal(drawn, image):
            raise SystemExit(
                f"error: {path} is not scene {path.stem} of the generator's draw {draw}: pass the --draw its folder was made with"
            )
        pred = seg.predict(Image.fromarray(image))
        owner = np.full(mask.shape, -1)
        for k, part in enumerate(parts):
            if part.cls == car:
                owner[part.alpha] = k  # nearer cars are drawn later and cover farther ones
        owner[mask != car] = -1
        for k, part in enumerate(parts):
            if part.cls == car:
                px = owner == k
                c = cars.setdefault(
                    f"{part.photo} {SHADES.get(tuple(round(t, 2) for t in part.tint), 'other')}", [0, 0]
                )
                c[0] += int(px.sum())
                c[1] += int((pred[px] == car).sum())
        road_photo = next(p.photo for p in parts if p.cls == road)
        for cls, name in enumerate(STREET_CLASSES):
            if cls in (car, void):
                continue
            px = mask == cls
            f = false.setdefault(f"Road ({road_photo})" if cls == road else name, [0, 0])
            f[0] += int(px.sum())
            f[1] += int((pred[px] == car).sum())
        scored = mask != void
        tp += int(((pred == car) & (mask == car)).sum())
        fp += int(((pred == car) & (mask != car) & scored).sum())
        fn += int(((pred != car) & (mask == car)).sum())
    return {"cars": cars, "false_car": false, "car_iou": tp / max(tp + fp + fn, 1), "tp": tp, "fp": fp, "fn": fn}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "camvid")
    p.add_argument(
        "--draw", type=int, default=0, help="the generator's seed the scenes were drawn with (benchmarks.camvid --draw)"
    )
    p.add_argument(
        "--rows", nargs="+", default=["P", "G", "N"], help="rows of benchmarks.camvid, trained and exported in --work"
    )
    a = p.parse_args(argv)
    results = {}
    for row in a.rows:
        run, export = a.work / f"run-{row}", a.work / f"export-{row}"
        if not (export / "model.onnx").is_file():
            raise SystemExit(
                f"error: {export} has no model.onnx: run `python -m benchmarks.camvid --work {a.work} --only {row}` first"
            )
        valid = [Path(v) for v in json.loads((run / "report.json").read_text())["valid_images"]]
        results[row] = tally(export, valid, a.draw)
        print(f"{row}: Car IoU {results[row]['car_iou']:.3f}", flush=True)
    kinds = sorted(
        {k for r in results.values() for k in r["cars"]},
        key=lambda k: -sum(r["cars"].get(k, [0])[0] for r in results.values()),
    )
    places = sorted({k for r in results.values() for k in r["false_car"]})
    out = (
        ROOT
        / "benchmarks"
        / "results"
        / f"camvid-cars{f'-draw{a.draw}' if a.draw else ''}-{dt.date.today().isoformat()}"
    )
    first = next(iter(results.values()))
    L = [
        f"# Where the cars go: CamVid-layout rows by car photo and shade ({dt.datetime.now():%Y-%m-%d %H:%M})",
        "",
        (
            f"Held-out scenes of `{a.work.name}` (draw {a.draw}) drawn again with their shapes recorded, scored at 360x480 through the served "
            "data path (fp32); `python -m benchmarks.camvid_cars`. Visible car pixels by the photo and shade they were painted with, and the "
            "share each row labels Car (recall); then the share of each other class's pixels labelled Car (the road by its photo)."
        ),
        "",
        "| car painted with | pixels (first row's split) | " + " | ".join(f"{r} recall" for r in results) + " |",
        "|---|---|" + "---|" * len(results),
    ]
    for k in kinds:
        L.append(
            f"| {k} | {first['cars'].get(k, [0])[0]} | "
            + " | ".join(
                f"{r['cars'][k][1] / max(r['cars'][k][0], 1):.3f}" if k in r["cars"] else "-" for r in results.values()
            )
            + " |"
        )
    L += [
        "",
        "| true class | pixels (first row's split) | " + " | ".join(f"{r} as Car" for r in results) + " |",
        "|---|---|" + "---|" * len(results),
    ]
    for k in places:
        L.append(
            f"| {k} | {first['false_car'].get(k, [0])[0]} | "
            + " | ".join(
                f"{r['false_car'][k][1] / max(r['false_car'][k][0], 1):.4f}" if k in r["false_car"] else "-"
                for r in results.values()
            )
            + " |"
        )
    L += ["", "| row | Car IoU | true Car px | missed Car px | false Car px |", "|---|---|---|---|---|"]
    L += [f"| {k} | {r['car_iou']:.3f} | {r['tp']} | {r['fn']} | {r['fp']} |" for k, r in results.items()]
    md = "\n".join(L) + f"\n\n![recall by car]({out.name}.png)\n"
    _figure(results, kinds, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps({"draw": a.draw, "work": str(a.work), "rows": results}, indent=2))
    print(md)
    return 0


def _figure(results: dict, kinds: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, len(kinds) * 0.9), 3.5))
    width = 0.8 / len(results)
    for j, (row, r) in enumerate(results.items()):
        ax.bar(
            np.arange(len(kinds)) + j * width,
            [r["cars"][k][1] / max(r["cars"][k][0], 1) if k in r["cars"] else 0 for k in kinds],
            width,
            label=row,
        )
    ax.set_xticks(np.arange(len(kinds)) + 0.4 - width / 2, kinds, rotation=30, ha="right")
    (
        ax.set_ylabel("Car recall"),
        ax.set_ylim(0, 1),
        ax.legend(),
        ax.set_title("held-out car pixels labelled Car, by the car's photo and shade"),
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
