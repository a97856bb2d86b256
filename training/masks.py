"""Mask creation: the workshop's Matlab step as a command.

- binary masks holding 0/255 (Leeds Butterfly style) become 0/1 index masks;
- RGB colour masks plus a palette file (`name r g b` per line) become index masks, and codes.txt is written.
A colour that is not in the palette is an error naming the file, the colour and its pixel count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError


def read_palette(path: Path) -> tuple[list[str], np.ndarray]:
    """Parse `name r g b` lines: returns the class names and a (C, 3) uint8 array of colours."""
    names, colours = [], []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 for p in parts[1:]):
            raise DataError(f"{path}:{n}: expected `name r g b` with r, g, b in 0..255, got {line.strip()!r}")
        names.append(parts[0])
        colours.append([int(p) for p in parts[1:]])
    if not names:
        raise DataError(f"{path}: palette is empty; write one `name r g b` line per class, background first")
    return names, np.array(colours, dtype=np.uint8)


def binary_to_index(mask: np.ndarray, path: Path | str = "mask") -> np.ndarray:
    """(H, W) 0/255 -> (H, W) 0/1 uint8. Any other value is an error naming the file."""
    values = np.unique(mask)
    bad = values[(values != 0) & (values != 255)]
    if bad.size:
        raise DataError(
            f"{path}: binary mask holds value {int(bad[0])} ({int((mask == bad[0]).sum())} pixels); binary masks must "
            "hold only 0 and 255"
        )
    return (mask == 255).astype(np.uint8)


def colour_to_index(rgb: np.ndarray, colours: np.ndarray, path: Path | str = "mask") -> np.ndarray:
    """(H, W, 3) uint8 colour mask -> (H, W) uint8 class ids by exact palette match."""
    key = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    pal = (colours[:, 0].astype(np.int32) << 16) | (colours[:, 1].astype(np.int32) << 8) | colours[:, 2]
    order = np.argsort(pal)
    pos = np.clip(np.searchsorted(pal[order], key), 0, len(pal) - 1)
    found = pal[order][pos] == key
    if not found.all():
        missing, counts = np.unique(key[~found], return_counts=True)
        c = int(missing[np.argmax(counts)])
        r, g, b = c >> 16, (c >> 8) & 255, c & 255
        raise DataError(
            f"{path}: colour ({r}, {g}, {b}) is not in the palette ({int(counts.max())} pixels); add it to the "
            "palette file or fix the mask"
        )
    return order[pos].astype(np.uint8)


def convert_masks(src: Path, out: Path, palette: Path | None = None) -> int:
    """Convert every mask PNG in `src` into `out` (index PNGs, same names); returns the count.

    Without a palette, masks must be binary 0/255. With one, masks are RGB and codes.txt is written
    beside `out`. Everything is checked before anything is written, so a bad file leaves `out` untouched.
    """
    src, out = Path(src), Path(out)
    files = sorted(p for p in src.iterdir() if p.suffix.lower() == ".png") if src.is_dir() else []
    if not files:
        raise DataError(f"{src}: no mask PNGs found; pass the folder that holds the masks")
    if out.resolve() == src.resolve():
        raise DataError(f"{out}: output folder is the input folder; pass a new --out so the originals are kept")
    names, colours = read_palette(palette) if palette else (None, None)
    converted = []
    for f in files:
        with Image.open(f) as im:
            if colours is None:
                converted.append(binary_to_index(np.asarray(im.convert("L")), f))
            else:
                converted.append(colour_to_index(np.asarray(im.convert("RGB")), colours, f))
    out.mkdir(parents=True, exist_ok=True)
    for f, m in zip(files, converted):
        Image.fromarray(m).save(out / f.name)
    if names:
        (out.parent / "codes.txt").write_text("\n".join(names) + "\n")
    return len(files)
