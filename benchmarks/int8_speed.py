"""int8 against fp32 of exported model folders, timed the way a service worker runs them, on this CPU.

    python -m benchmarks.int8_speed runs/camvid/export-G exported_models/default [...] [--tag NAME]

For each folder with `model.int8.onnx`: images/s of fp32 and int8 with one ONNX Runtime thread (the serving
session options), batch 8, on the folder's bundled held-out images (check/) at the training size, repeated
to at least 16 images; the two graphs' passes interleaved and the median of 7 taken
(training.export.variants.throughputs, what the export's own speed check calls). Run it on a quiet host:
it re-measures what an export measured at the time, when other work may have shared the cores.
Prints a table and writes benchmarks/results/int8-speed.md/.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.harness import stamp, write_report


def main(argv=None) -> int:
    from contract.metrics import read_check
    from training.export.variants import SPEED_BATCH, SPEED_THREADS, throughputs

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", type=Path, nargs="+")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--tag", help="report name: int8-speed-<tag>")
    a = p.parse_args(argv)
    rows = []
    for folder in a.folders:
        check = read_check(folder)
        if not (folder / "model.int8.onnx").is_file() or check is None:
            raise SystemExit(f"error: {folder}: needs model.onnx, model.int8.onnx and check/ (export with --int8)")
        fp32, int8 = throughputs([folder / "model.onnx", folder / "model.int8.onnx"], check[0], repeats=a.repeats)
        export = folder / "export.json"
        at_export = json.loads(export.read_text()).get("int8", {}).get("speedup") if export.is_file() else None
        rows.append({"model": str(folder), "size": f"{check[0].shape[1]}x{check[0].shape[2]}", "fp32_img_s": fp32,
                     "int8_img_s": int8, "speedup": int8 / fp32, "speedup_at_export": at_export})  # fmt: skip
        print(f"{folder}: {int8 / fp32:.2f}x ({int8:.1f} vs {fp32:.1f} img/s)", flush=True)
    L = [f"# int8 against fp32, as a worker runs them ({stamp(argv, 'benchmarks.int8_speed')})", "",
         f"ONNX Runtime CPU, {SPEED_THREADS} thread, batch {SPEED_BATCH}, each model's bundled held-out images at its "
         f"training size, fp32 and int8 passes interleaved, median of {a.repeats}.", "",
         "| model | size | fp32 img/s | int8 img/s | speed-up | at export |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        was = f"{r['speedup_at_export']:.2f}x" if r["speedup_at_export"] else "-"
        L.append(f"| {r['model']} | {r['size']} | {r['fp32_img_s']:.1f} | {r['int8_img_s']:.1f} | "
                 f"**{r['speedup']:.2f}x** | {was} |")  # fmt: skip
    write_report(f"int8-speed-{a.tag}" if a.tag else "int8-speed", "\n".join(L) + "\n", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
