"""Images that requests bring: a path on the server (inside an allowed folder), an http(s) URL, or base64.

URLs and base64 images are written once under ``$CAPBENCH_HOME/serve-images``, named by the
SHA-256 of their bytes, so a judge reads them like any benchmark image and the judge cache
keys them by content. Every image is checked (:func:`capbench.images.image_problem`) before a
judge could see it; a problem is a :class:`RequestError` naming the item and the field.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from capbench import ImageRef
from capbench.hashing import sha256_bytes
from capbench.home import capbench_home
from capbench.images import image_problem, image_type

#: The base64 formats a request may name (the bytes decide the type; this only has to be an image format).
FORMATS = ("png", "jpeg", "jpg", "webp", "gif", "bmp", "tiff")
#: URLs remembered (URL -> image), so a group of rollouts of one image downloads it once.
_REMEMBERED = 4096


class RequestError(Exception):
    """A request the service refuses: an HTTP status and a message naming the item, the field and the fix."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class ImageStore:
    """Turns a request's ``image`` object into an :class:`ImageRef`, refusing what no judge should read.

    Args:
        roots: Folders whose images items may name by path (none: paths are refused).
        max_bytes: The most an image URL may download.
    """

    def __init__(self, roots: Sequence[Path], max_bytes: int) -> None:
        self.roots = tuple(roots)
        self.max_bytes = max_bytes
        self.folder = capbench_home() / "serve-images"
        self._hashes: OrderedDict[tuple[str, int, int], str] = OrderedDict()
        self._urls: OrderedDict[str, ImageRef] = OrderedDict()
        self._lock = threading.Lock()

    def image(self, value: Any, where: str) -> ImageRef:
        """Return the image ``value`` names (``{"path"}``, ``{"url"}`` or ``{"base64", "format"}``).

        Raises:
            RequestError: the object is malformed, or the image is missing, outside the allowed
                folders, not downloadable, not base64, or not a readable image.
        """
        if not isinstance(value, Mapping):
            raise RequestError(400, f"{where} must be an object: {{'path'}}, {{'url'}} or {{'base64', 'format'}}")
        kinds = [k for k in ("path", "url", "base64") if k in value]
        unknown = sorted(set(value) - {"path", "url", "base64", "format"})
        if unknown or len(kinds) != 1 or ("format" in value and kinds != ["base64"]):
            given = ", ".join(sorted(map(str, value))) or "nothing"
            raise RequestError(
                400,
                f"{where} must hold exactly one of 'path', 'url' or 'base64' (with 'format'), not {given}",
            )
        kind = kinds[0]
        if not isinstance(value[kind], str) or not value[kind]:
            raise RequestError(400, f"{where}.{kind} must be a non-empty string")
        if kind == "path":
            return self._path(value["path"], f"{where}.path")
        if kind == "url":
            return self._url(value["url"], f"{where}.url")
        return self._base64(value["base64"], value.get("format"), f"{where}.base64")

    # ------------------------------------------------------------ the three kinds

    def _path(self, text: str, where: str) -> ImageRef:
        if "\x00" in text:
            raise RequestError(400, f"{where} holds a NUL character; send the image's path")
        if not self.roots:
            raise RequestError(
                403,
                f"{where}: this server takes no image paths (it was started without --images-root); "
                "send the image as 'url' or 'base64', or start the server with --images-root DIR",
            )
        given = Path(text)
        candidates = [given] if given.is_absolute() else [root / given for root in self.roots]
        resolved = [c.resolve() for c in candidates]
        inside = [p for p in resolved if any(p.is_relative_to(root) for root in self.roots)]
        if not inside:
            roots = ", ".join(str(r) for r in self.roots)
            raise RequestError(
                403,
                f"{where} {text!r} is outside the server's image folders (--images-root {roots}); "
                "send the image as 'url' or 'base64', or put it in one of those folders",
            )
        found = next((p for p in inside if p.is_file()), None)
        if found is None:
            raise RequestError(400, f"{where} {text!r}: no such image file on the server")
        try:
            stat = found.stat()
            key = (str(found), stat.st_size, stat.st_mtime_ns)
            with self._lock:
                digest = self._hashes.get(key)
            if digest is None:
                data = found.read_bytes()
                self._check(data, where, repr(text))
                digest = sha256_bytes(data)
                with self._lock:
                    self._hashes[key] = digest
                    while len(self._hashes) > _REMEMBERED:
                        self._hashes.popitem(last=False)
        except OSError as exc:
            raise RequestError(400, f"{where} {text!r} cannot be read on the server ({exc.strerror})") from None
        return ImageRef(str(found), digest)

    def _url(self, url: str, where: str) -> ImageRef:
        if not url.lower().startswith(("http://", "https://")):
            raise RequestError(400, f"{where} {url[:80]!r} is not an http(s) URL; send 'base64' for inline images")
        with self._lock:
            known = self._urls.get(url)
        if known is not None and Path(known.path).is_file():
            return known
        import httpx

        try:
            with (
                httpx.Client(timeout=30.0, follow_redirects=True) as client,
                client.stream("GET", url) as response,
            ):
                if response.status_code != 200:
                    raise RequestError(400, f"{where} {url[:80]!r}: the download answered HTTP {response.status_code}")
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise RequestError(
                            413, f"{where} {url[:80]!r}: the image is over {self.max_bytes / 1e6:g} MB (--max-body-mb)"
                        )
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise RequestError(
                400, f"{where} {url[:80]!r} could not be downloaded ({type(exc).__name__}: {exc})"
            ) from None
        ref = self._store(b"".join(chunks), where, repr(url[:80]))
        with self._lock:
            self._urls[url] = ref
            while len(self._urls) > _REMEMBERED:
                self._urls.popitem(last=False)
        return ref

    def _base64(self, text: str, fmt: Any, where: str) -> ImageRef:
        if fmt is not None and (not isinstance(fmt, str) or fmt.lower() not in FORMATS):
            raise RequestError(400, f"{where[: -len('.base64')]}.format {fmt!r} is not one of {', '.join(FORMATS)}")
        if text.startswith("data:") and "," in text:  # a data: URL is base64 too
            text = text.split(",", 1)[1]
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RequestError(400, f"{where} is not valid base64 ({exc}); encode the image's bytes") from None
        return self._store(data, where, "")

    # ------------------------------------------------------------ checks and storage

    @staticmethod
    def _check(data: bytes, where: str, what: str) -> None:
        problem = image_problem(data)
        if problem is not None:
            raise RequestError(400, f"{where} {what}: {problem}" if what else f"{where}: {problem}")

    def _store(self, data: bytes, where: str, what: str) -> ImageRef:
        """Check the bytes, write them once under their hash, and return the image."""
        self._check(data, where, what)
        digest = sha256_bytes(data)
        path = self.folder / f"{digest}.{image_type(data)[1]}"
        if not path.is_file():
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return ImageRef(str(path), digest)
