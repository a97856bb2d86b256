"""Serving for exported segmentation models: the BentoML service (serving.service), the Python API
(`Segmenter`), folder prediction (`python -m serving predict`)."""

from .segmenter import Segmenter

__all__ = ["Segmenter"]
