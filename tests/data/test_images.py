"""The one image decoder: colour conversions to RGB, size guards checked on the header, base64 input."""

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from maple.data.images import (
    ImageError,
    decode_image,
    decode_image_b64,
    decode_image_detailed,
    encode_image,
    image_format,
)


def _bytes(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose only pixel chunk holds 4 bytes of garbage."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"junk") + _chunk(b"IEND", b"")


def _reason(data: bytes, **limits) -> str:
    with pytest.raises(ImageError) as e:
        decode_image(data, **limits)
    return e.value.reason


def test_rgb_png_decodes_to_the_same_pixels_without_conversion():
    pixels = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    decoded = decode_image_detailed(_bytes(Image.fromarray(pixels, "RGB")))
    assert decoded.image.mode == "RGB" and decoded.format == "png" and not decoded.converted
    np.testing.assert_array_equal(np.asarray(decoded.image), pixels)


def test_palette_image_becomes_rgb_with_its_palette_colours():
    img = Image.new("P", (10, 10), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0, 0, 0] * 254)
    decoded = decode_image_detailed(_bytes(img))
    assert decoded.image.mode == "RGB" and decoded.converted
    assert decoded.image.getpixel((3, 3)) == (10, 200, 30)


def test_palette_transparent_index_is_composited_on_white():
    img = Image.new("P", (10, 10), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0, 0, 0] * 254)
    out = decode_image(_bytes(img, transparency=1))
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_rgba_is_composited_on_white_by_alpha():
    arr = np.zeros((10, 10, 4), dtype=np.uint8)
    arr[..., 0] = 200  # red channel
    arr[:, :5, 3] = 255  # left half opaque
    arr[:, 5:, 3] = 0  # right half fully transparent
    arr[0, 0, 3] = 128
    out = np.asarray(decode_image(_bytes(Image.fromarray(arr, "RGBA")))).astype(int)
    assert tuple(out[5, 2]) == (200, 0, 0)
    assert tuple(out[5, 7]) == (255, 255, 255)
    a = 128 / 255  # alpha compositing: a * colour + (1 - a) * white
    expected = [a * 200 + (1 - a) * 255, (1 - a) * 255, (1 - a) * 255]
    assert np.abs(out[0, 0] - np.array(expected)).max() <= 1


def test_greyscale_with_alpha_is_composited_on_white():
    img = Image.new("LA", (10, 10), (40, 0))
    assert decode_image(_bytes(img)).getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_is_converted_to_rgb():
    img = Image.new("CMYK", (10, 10), (0, 255, 255, 0))  # no cyan ink, full magenta and yellow: red
    out = decode_image(_bytes(img, "TIFF"))
    assert out.mode == "RGB" and out.getpixel((4, 4)) == (255, 0, 0)


def test_greyscale_and_bilevel_become_grey_rgb():
    assert decode_image(_bytes(Image.new("L", (10, 10), 77))).getpixel((1, 1)) == (77, 77, 77)
    assert decode_image(_bytes(Image.new("1", (10, 10), 1))).getpixel((1, 1)) == (255, 255, 255)


def test_16_bit_greyscale_is_rescaled_not_clipped():
    values = np.array([[0, 0x0100, 0x8000, 0xFFFF]] * 10, dtype=np.uint16).repeat(3, axis=1)
    out = np.asarray(decode_image(_bytes(Image.fromarray(values))))
    assert out[0, ::3, 0].tolist() == [0, 1, 128, 255]  # the high byte; PIL's convert would clip to 255
    assert (out[..., 0] == out[..., 2]).all()


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_image_detailed(_bytes(img, "JPEG", exif=exif.tobytes()))
    assert decoded.image.size == (20, 40) and decoded.converted


def test_other_formats_are_marked_converted_so_they_get_re_encoded():
    decoded = decode_image_detailed(_bytes(Image.new("RGB", (10, 10)), "BMP"))
    assert decoded.format == "bmp" and decoded.converted


def test_rgb_jpeg_is_not_marked_converted():
    decoded = decode_image_detailed(_bytes(Image.new("RGB", (10, 10), (9, 9, 9)), "JPEG"))
    assert decoded.format == "jpeg" and not decoded.converted


def test_empty_bytes_are_rejected_as_empty():
    assert _reason(b"") == "empty"


def test_random_bytes_are_rejected_as_corrupt():
    assert _reason(np.random.default_rng(1).bytes(500)) == "corrupt"


def test_truncated_png_is_rejected_as_corrupt():
    pixels = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _bytes(Image.fromarray(pixels))
    assert _reason(data[: len(data) // 2]) == "corrupt"


def test_size_limits_are_checked_on_the_header_before_decoding():
    # The pixel data is garbage: a full decode fails as corrupt, so these reasons prove the header came first.
    assert _reason(_png_header_only(100, 100)) == "corrupt"
    assert _reason(_png_header_only(1000, 1000), max_pixels=10_000) == "too_large"
    assert _reason(_png_header_only(4, 100)) == "too_small"
    assert _reason(_png_header_only(2000, 20), max_pixels=10**9) == "extreme_aspect_ratio"


def test_decompression_bomb_header_is_too_large():
    # 100k x 100k claims 10^10 pixels; PIL's own guard fires above 2 * Image.MAX_IMAGE_PIXELS.
    assert _reason(_png_header_only(100_000, 100_000), max_pixels=10**12) == "too_large"
    assert _reason(_png_header_only(100_000, 100_000)) == "too_large"


def test_non_bytes_input_is_wrong_type():
    assert _reason("not bytes") == "wrong_type"


def test_encode_then_decode_png_is_lossless():
    pixels = np.random.default_rng(3).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    data = encode_image(Image.fromarray(pixels), "png")
    assert image_format(data) == "png"
    np.testing.assert_array_equal(np.asarray(decode_image(data)), pixels)


def test_image_format_reads_the_header():
    img = Image.new("RGB", (10, 10))
    assert image_format(encode_image(img, "jpeg")) == "jpeg"
    assert image_format(encode_image(img, "webp")) == "webp"
    assert image_format(_bytes(img, "GIF")) == "gif"
    with pytest.raises(ImageError):
        image_format(b"plain text, not an image")


def test_base64_and_data_url_decode_to_the_same_image():
    data = encode_image(Image.new("RGB", (10, 12), (1, 2, 3)))
    b64 = base64.b64encode(data).decode()
    for text in (b64, f"data:image/png;base64,{b64}", b64.rstrip("="), base64.urlsafe_b64encode(data).decode()):
        out = decode_image_b64(text)
        assert out.size == (10, 12) and out.getpixel((0, 0)) == (1, 2, 3)


def test_invalid_base64_and_non_base64_data_url_are_rejected():
    with pytest.raises(ImageError) as e:
        decode_image_b64("!!not base64!!")
    assert e.value.reason == "bad_base64"
    with pytest.raises(ImageError) as e:
        decode_image_b64("data:image/png,%89PNG")
    assert e.value.reason == "bad_data_url"
