"""The one image decoder of maple: encoded bytes (or a base64 / data URL string) in, an RGB `PIL.Image` out.

Every stage that needs pixels calls `decode_image`; every rejection is an `ImageError` whose `reason` is a short
machine-readable word that validation writes to the quarantine (`empty`, `corrupt`, `too_large`, `too_small`,
`extreme_aspect_ratio`, `unsupported_mode`, `bad_base64`, `bad_data_url`, `wrong_type`). Only ACCEPTED_FORMATS
are opened: bytes of any other format (EPS, PSD, ICO, ...) are `corrupt`, never handed to another PIL plugin.

Size limits are checked on the header (`Image.open` parses only the header) before the pixels are decoded, so a
decompression bomb is refused without allocating it. PIL's own guard (`Image.MAX_IMAGE_PIXELS`, raising
`DecompressionBombError` above twice that) stays in place as a second line and also maps to `too_large`; a
`max_pixels` above PIL's limit is therefore capped by it (we do not change the process-wide global).

Colour handling: alpha (RGBA, LA, PA, P or L/RGB with a transparent colour) is composited on white, the usual
convention for captioned photos and what a viewer shows; palette, CMYK, YCbCr and 1-bit images go through PIL's
conversions; 16-bit and 32-bit greyscale are rescaled to 8 bits (PIL's own `convert` clips them instead). The EXIF
orientation is applied, so the pixels are the picture as a viewer shows it, which is what a caption describes.
ICC profiles are ignored (pixels are read as sRGB).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from maple.data.config import DataConfig

_DEFAULTS = DataConfig.model_fields
DEFAULT_MAX_PIXELS: int = _DEFAULTS["max_image_pixels"].default
DEFAULT_MIN_SIDE: int = _DEFAULTS["min_image_side"].default
DEFAULT_MAX_ASPECT_RATIO: float = _DEFAULTS["max_aspect_ratio"].default

# The only formats PIL may open here (its plugin names). PIL parses whatever its ~40 plugins recognise, and some
# hand the bytes to other programs (EPS runs Ghostscript); these cover what photo datasets and clients send.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")  # their files' usual names

# Encoded formats that travel unchanged when the image is already plain RGB; anything else is re-encoded as PNG so
# that downstream readers (browsers, MLLM processors) meet only these two.
PASSTHROUGH_FORMATS = ("png", "jpeg")

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_16BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}
_EXIF_ORIENTATION = 0x0112  # 1 = upright; 2..8 = mirrored and/or rotated


class ImageError(ValueError):
    """An image that cannot be used. `reason` is machine-readable; `detail` says what was found."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class DecodedImage(NamedTuple):
    image: Image.Image  # RGB, fully loaded
    format: str  # the encoded format that was read: "png", "jpeg", "webp", ...
    converted: bool  # pixels or format differ from the input bytes: re-encode before storing


def image_limits(cfg: DataConfig) -> dict:
    """The keyword arguments of `decode_image` taken from a `DataConfig`."""
    return {"max_pixels": cfg.max_image_pixels, "min_side": cfg.min_image_side,
            "max_aspect_ratio": cfg.max_aspect_ratio}


def _format_name(pil_format: str | None) -> str:
    name = (pil_format or "unknown").lower()
    return "jpeg" if name == "mpo" else name  # MPO (multi-picture, many phone cameras) is a JPEG with extra frames


def image_format(data: bytes) -> str:
    """The encoded format ("png", "jpeg", "gif", "webp", ...) read from the header; ImageError if unrecognised."""
    if not data:
        raise ImageError("empty", "no bytes")
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as img:
            return _format_name(img.format)
    except Image.DecompressionBombError as e:
        raise ImageError("too_large", str(e)) from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for unreadable headers
        raise ImageError("corrupt", f"{type(e).__name__}: {e}") from None


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from the header, nothing decoded; ImageError for bytes that are not an accepted image."""
    if not data:
        raise ImageError("empty", "no bytes")
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as img:
            return img.size
    except Image.DecompressionBombError as e:
        raise ImageError("too_large", str(e)) from None
    except UnidentifiedImageError:
        raise ImageError("corrupt", f"not a recognised image format ({len(data)} bytes; accepted: "
                                    f"{', '.join(ACCEPTED_FORMATS)})") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for unreadable headers
        raise ImageError("corrupt", f"{type(e).__name__}: {e}") from None


def _check_size(width: int, height: int, max_pixels: int, min_side: int, max_aspect_ratio: float) -> None:
    if width * height > max_pixels:
        raise ImageError("too_large", f"{width}x{height} = {width * height} pixels > max_pixels {max_pixels}")
    if min(width, height) < max(min_side, 1):
        raise ImageError("too_small", f"{width}x{height}: a side is below min_side {min_side}")
    ratio = max(width, height) / min(width, height)
    if ratio > max_aspect_ratio:
        raise ImageError("extreme_aspect_ratio", f"{width}x{height}: aspect ratio {ratio:.1f} > {max_aspect_ratio}")


def _rescale_to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> "L", scaled rather than clipped."""
    arr = np.asarray(img)
    if img.mode in _16BIT_MODES:
        out = arr.astype(np.uint32) >> 8
    elif img.mode == "F" and arr.size and float(np.nanmax(arr)) <= 1.0:
        out = np.nan_to_num(arr) * 255.0  # float images in [0, 1]
    elif arr.size and float(np.nanmax(arr)) > 255:
        out = np.nan_to_num(arr.astype(np.float64)) / 257.0  # a 16-bit range held in "I" (32-bit) mode
    else:
        out = np.nan_to_num(arr)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "L")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode in _16BIT_MODES or img.mode in ("I", "F"):
        return _rescale_to_8bit(img).convert("RGB")
    try:
        return img.convert("RGB")  # P, L, 1, CMYK, YCbCr, RGBX, ...
    except (ValueError, OSError) as e:
        raise ImageError("unsupported_mode", f"cannot convert mode {img.mode} to RGB: {e}") from None


def decode_image_detailed(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE,
                          max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO) -> DecodedImage:
    """Decode and check `data`; return the RGB image, the source format and whether anything was converted."""
    if isinstance(data, memoryview | bytearray):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise ImageError("wrong_type", f"expected bytes, got {type(data).__name__}")
    if not data:
        raise ImageError("empty", "no bytes")
    try:
        img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)  # parses the header only
    except Image.DecompressionBombError as e:
        raise ImageError("too_large", str(e)) from None
    except UnidentifiedImageError:
        raise ImageError("corrupt", f"not a recognised image format ({len(data)} bytes; accepted: "
                                    f"{', '.join(ACCEPTED_FORMATS)})") from None
    except Exception as e:  # noqa: BLE001 - a broken header surfaces as many exception types
        raise ImageError("corrupt", f"{type(e).__name__}: {e}") from None
    fmt = _format_name(img.format)
    _check_size(*img.size, max_pixels, min_side, max_aspect_ratio)
    try:
        img.load()  # the full decode: truncated or corrupt pixel data fails here
        source_mode = img.mode
        rotated = img.getexif().get(_EXIF_ORIENTATION, 1) in range(2, 9)
        rgb = _to_rgb(ImageOps.exif_transpose(img) if rotated else img)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError("too_large", str(e)) from None
    except Exception as e:  # noqa: BLE001 - PIL decoders raise OSError, SyntaxError, ValueError, struct.error...
        raise ImageError("corrupt", f"{type(e).__name__}: {e}") from None
    if rotated:
        _check_size(*rgb.size, max_pixels, min_side, max_aspect_ratio)
    converted = rotated or source_mode != "RGB" or "transparency" in img.info or fmt not in PASSTHROUGH_FORMATS
    return DecodedImage(rgb, fmt, converted)


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE,
                 max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO) -> Image.Image:
    """Encoded image bytes -> RGB `PIL.Image`, fully loaded; raises `ImageError(reason)` for anything unusable."""
    return decode_image_detailed(data, max_pixels=max_pixels, min_side=min_side,
                                 max_aspect_ratio=max_aspect_ratio).image


_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^,;]*)*),(?P<payload>.*)$", re.DOTALL)


def b64_to_bytes(text: str) -> bytes:
    """A base64 string (standard or URL-safe alphabet, padding optional, whitespace ignored) or a
    `data:image/...;base64,...` URL -> the bytes it carries."""
    if not isinstance(text, str):
        raise ImageError("wrong_type", f"expected a base64 string, got {type(text).__name__}")
    text = text.strip()
    m = _DATA_URL.match(text)
    if m:
        if ";base64" not in m.group("params").lower():
            raise ImageError("bad_data_url", "only base64 data URLs are accepted (data:image/png;base64,...)")
        text = m.group("payload")
    payload = re.sub(r"\s+", "", text)
    if not payload:
        raise ImageError("empty", "empty base64 payload")
    payload += "=" * (-len(payload) % 4)
    try:
        if "-" in payload or "_" in payload:
            return base64.b64decode(payload, altchars=b"-_", validate=True)
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError("bad_base64", str(e)) from None


def decode_image_b64(text: str, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE,
                     max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO) -> Image.Image:
    """Like `decode_image`, from a base64 string or a base64 data URL (what HTTP clients send)."""
    return decode_image(b64_to_bytes(text), max_pixels=max_pixels, min_side=min_side,
                        max_aspect_ratio=max_aspect_ratio)


def to_data_url(data: bytes) -> str:
    """Encoded image bytes -> `data:image/<format>;base64,...`, the form browsers show and `b64_to_bytes` reads
    back; ImageError for bytes that are not an accepted image."""
    return f"data:image/{image_format(data)};base64,{base64.b64encode(data).decode('ascii')}"


def encode_image(img: Image.Image, format: str = "png") -> bytes:  # noqa: A002 - mirrors PIL's argument name
    """An image -> encoded bytes ("png" lossless; "jpeg" at quality 95; "webp" lossless)."""
    fmt = format.lower()
    buf = io.BytesIO()
    if fmt in ("jpeg", "jpg"):
        img = img if img.mode in ("RGB", "L") else _to_rgb(img)
        img.save(buf, format="JPEG", quality=95)
    elif fmt == "webp":
        img.save(buf, format="WEBP", lossless=True)
    elif fmt == "png":
        img.save(buf, format="PNG")
    else:
        raise ValueError(f"encode_image: unsupported format {format!r}; use 'png', 'jpeg' or 'webp'")
    return buf.getvalue()


def image_files(folder: str | Path, limit: int = 1000) -> list[Path]:
    """Up to `limit` image files (by name, IMAGE_SUFFIXES) under a local folder, searched recursively; for messages
    about a folder that should or should not hold images."""
    found: list[Path] = []
    for parent, _, names in os.walk(folder):
        found += [Path(parent) / n for n in sorted(names) if n.lower().endswith(IMAGE_SUFFIXES)]
        if len(found) >= limit:
            return found[:limit]
    return found
