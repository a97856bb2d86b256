"""A `learn.export()` pickle loaded for export: only when the user trusts it (unpickling runs its code)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ExportError


def load_learner_pickle(path: Path, trust: bool):
    """fastai's `load_learner` on a `learn.export()` file. Unpickling runs code from the file, so it needs
    `trust` (the CLI's --trust-pickle); errors are one line."""
    path = Path(path)
    if not trust:
        raise ExportError(
            f"{path}: loading a pickled Learner runs code stored in the file; if you made it (or trust who did), "
            "add --trust-pickle"
        )
    if not path.is_file():
        raise ExportError(f"{path}: file not found; pass the .pkl written by learn.export()")
    from fastai.learner import load_learner

    print(f"[1/4] loading the Learner from {path}", flush=True)

    try:
        return load_learner(path, cpu=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
        raise ExportError(
            f"{path}: fastai could not load it ({exc.__class__.__name__}: {first}); it must come from learn.export() "
            "with the same fastai version, and any custom functions it uses must be importable"
        ) from None
