"""Images as engines send them; the functions live in :mod:`capbench.images`, below data and engines."""

from __future__ import annotations

from capbench.images import data_url, image_problem, image_type, load_rgb

__all__ = ["data_url", "image_problem", "image_type", "load_rgb"]
