"""Image decoding and checks: an image's type read from its bytes, RGB decoding, ``data:`` URLs.

Below benchmarks and engines alike: loaders check images with :func:`image_problem` before any
judge sees them, and engines send them decoded (:func:`load_rgb`) or as URLs (:func:`data_url`).
"""

from __future__ import annotations

import base64
import io
import mimetypes
from pathlib import Path
from typing import Any

#: Leading bytes of the image formats vision models take, and (MIME type, file extension).
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png", "png"),
    (b"\xff\xd8\xff", "image/jpeg", "jpg"),
    (b"GIF87a", "image/gif", "gif"),
    (b"GIF89a", "image/gif", "gif"),
    (b"BM", "image/bmp", "bmp"),
    (b"II*\x00", "image/tiff", "tiff"),
    (b"MM\x00*", "image/tiff", "tiff"),
)


def image_type(data: bytes, name: str = "") -> tuple[str, str]:
    """Return (MIME type, extension) of an image: from its bytes, else from ``name``'s suffix.

    The bytes decide: a file's extension may lie, and servers check the type they are told.
    """
    for magic, mime, ext in _MAGIC:
        if data.startswith(magic):
            return mime, ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", "webp"
    suffix = Path(name).suffix.lower().lstrip(".")
    mime = mimetypes.guess_type(name)[0] if name else None
    return mime or "application/octet-stream", suffix if suffix.isalnum() else "img"


def data_url(path: str | Path) -> str:
    """Return the file at ``path`` as a base64 ``data:`` URL with its MIME type."""
    data = Path(path).read_bytes()
    mime, _ = image_type(data, str(path))
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def load_rgb(path: str | Path) -> Any:
    """Decode the image at ``path`` as an RGB PIL image."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def image_problem(data: bytes) -> str | None:
    """Say why ``data`` cannot serve as an image (empty, not an image, truncated, too large), or None if it can.

    Reads the header and, for PNG, checks every chunk (no decoding): cheap enough to run on a
    whole benchmark before any judge sees an image. Without Pillow only the header is checked.
    """
    if not data:
        return "empty file (0 bytes)"
    if not image_type(data)[0].startswith("image/"):
        return "not an image (no PNG, JPEG, GIF, BMP, TIFF or WebP header)"
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Image.DecompressionBombError as exc:
        return f"too large to decode safely ({exc})"
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError) for broken files
        return f"unreadable or truncated image ({type(exc).__name__}: {exc})"
    return None
