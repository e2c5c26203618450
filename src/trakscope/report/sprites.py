"""Thumbnails packed into sprite sheets, embedded as data URIs.

A sheet holds ``cols * cols`` thumbnails in row-major order; example ``i`` is on sheet
``i // (cols * cols)`` at cell ``i % (cols * cols)``. The page decodes a sheet only when one of its
thumbnails is first shown, so a 10k-example split costs nothing until it is looked at.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

MAX_THUMB = 64  # pixels; larger thumbnails are downscaled to keep the page small


def sheet_images(thumbs: np.ndarray, cols: int) -> list[np.ndarray]:
    """uint8 ``[n, T, T, 3]`` thumbnails -> uint8 ``[cols*T, cols*T, 3]`` sheets (the last one padded black)."""
    n, t = thumbs.shape[0], thumbs.shape[1]
    per = cols * cols
    sheets = []
    for s0 in range(0, n, per):
        block = np.zeros((per, t, t, 3), dtype=np.uint8)
        part = np.asarray(thumbs[s0:s0 + per])
        block[: len(part)] = part
        sheets.append(block.reshape(cols, cols, t, t, 3).transpose(0, 2, 1, 3, 4).reshape(cols * t, cols * t, 3))
    return sheets


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    pil = Image.fromarray(image)
    if fmt == "PNG":
        pil.save(buf, format="PNG", compress_level=6)
    else:
        pil.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def _resize(thumbs: np.ndarray, size: int) -> np.ndarray:
    out = np.empty((thumbs.shape[0], size, size, 3), dtype=np.uint8)
    for i, im in enumerate(thumbs):
        out[i] = np.asarray(Image.fromarray(np.asarray(im)).resize((size, size), Image.Resampling.LANCZOS))
    return out


def sprite_sheets(thumbs: np.ndarray, cols: int = 16, fmt: str | None = None) -> dict:
    """Encode a split's thumbnails as sprite-sheet data URIs.

    PNG keeps small or flat images (digits) exact; photos switch to JPEG when PNG would be over 1.5x larger.

    Args:
        thumbs: uint8 ``[n, T, T, 3]``.
        cols: sheets are ``cols x cols`` thumbnails.
        fmt: "PNG" or "JPEG"; default: chosen from the first sheet.

    Returns:
        ``{"size": T', "cols": cols, "sheets": [data URI, ...]}`` with ``T' = min(T, MAX_THUMB)``.
    """
    if thumbs.ndim != 4 or thumbs.shape[3] != 3 or thumbs.dtype != np.uint8:
        raise ValueError(f"thumbnails must be uint8 [n, T, T, 3], got {thumbs.dtype} {thumbs.shape}")
    if thumbs.shape[1] > MAX_THUMB:
        thumbs = _resize(thumbs, MAX_THUMB)
    sheets = sheet_images(thumbs, cols)
    if fmt is None and sheets:
        png, jpg = _encode(sheets[0], "PNG"), _encode(sheets[0], "JPEG")
        fmt = "PNG" if len(png) <= 1.5 * len(jpg) else "JPEG"
    fmt = fmt or "PNG"
    mime = "image/png" if fmt == "PNG" else "image/jpeg"
    uris = [f"data:{mime};base64," + base64.b64encode(_encode(s, fmt)).decode("ascii") for s in sheets]
    return {"size": int(thumbs.shape[1]), "cols": cols, "sheets": uris}
