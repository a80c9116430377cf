"""Request inputs and limits (maple.serving.inputs): what is accepted, and which status each refusal gets."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from PIL import Image

from maple.data.images import encode_image
from maple.serving.errors import ApiError
from maple.serving.inputs import (
    Input,
    Limits,
    check_bearer,
    decode_image_input,
    decoded,
    image_pixels,
    key_digest,
    parse_input,
    parse_inputs,
)
from maple.serving.pixels import PixelBudget

LIMITS = Limits(max_inputs=4, max_text_chars=20, max_image_pixels=32 * 32, max_body_bytes=10_000,
                allow_image_urls=False, max_request_pixels=2 * 32 * 32)


def png_data_url(size: int = 16, colour=(255, 0, 0)) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_image(Image.new("RGB", (size, size), colour))).decode()


def refusal(fn, *args) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args)
    return info.value


def test_a_string_is_one_text_input():
    assert parse_inputs("a red circle", LIMITS) == [Input("text", "a red circle", "input")]


def test_list_items_may_be_strings_text_objects_and_image_objects():
    url = png_data_url()
    parsed = parse_inputs(["a", {"text": "b"}, {"image": url}], LIMITS)
    assert [(p.kind, p.value, p.param) for p in parsed] == [("text", "a", "input[0]"), ("text", "b", "input[1]"),
                                                            ("image", url, "input[2]")]


def test_more_inputs_than_the_limit_is_413_naming_the_limit():
    err = refusal(parse_inputs, ["x"] * 5, LIMITS)
    assert (err.status, err.code) == (413, "too_many_inputs") and "4" in err.message


def test_text_over_the_character_limit_is_413_naming_its_position():
    err = refusal(parse_inputs, ["ok", "y" * 21], LIMITS)
    assert (err.status, err.code, err.param) == (413, "text_too_long", "input[1]")


@pytest.mark.parametrize("item", [3, [1, 2], None, {"txt": "a"}, {"text": "a", "image": "b"}, {"text": 5}])
def test_anything_but_text_or_image_items_is_422(item):
    err = refusal(parse_input, item, LIMITS, "input[0]")
    assert (err.status, err.code, err.param) == (422, "invalid_input", "input[0]")


def test_token_id_inputs_are_refused_with_a_hint():
    assert "token ids" in refusal(parse_inputs, [[1, 2, 3]], LIMITS).message


def test_an_empty_input_list_is_422():
    assert refusal(parse_inputs, [], LIMITS).status == 422


def test_image_urls_are_refused_unless_enabled():
    err = refusal(parse_input, {"image": "https://example.com/cat.png"}, LIMITS, "input")
    assert (err.status, err.code) == (422, "image_urls_disabled")
    enabled = Limits(**{**LIMITS.__dict__, "allow_image_urls": True})
    assert parse_input({"image": "https://example.com/cat.png"}, enabled, "input").is_url


def test_other_url_schemes_are_refused_even_when_urls_are_enabled():
    enabled = Limits(**{**LIMITS.__dict__, "allow_image_urls": True})
    assert refusal(parse_input, {"image": "file:///etc/passwd"}, enabled, "input").status == 422


def test_an_image_over_the_pixel_limit_is_413():
    err = refusal(decode_image_input, png_data_url(33), LIMITS, "input[0]")
    assert (err.status, err.code, err.param) == (413, "image_too_large", "input[0]")


@pytest.mark.parametrize("data", ["not base64 !!", base64.b64encode(b"not an image").decode(),
                                  "data:image/png,rawpixels"])
def test_undecodable_images_are_422(data):
    err = refusal(decode_image_input, data, LIMITS, "input[0]")
    assert (err.status, err.code) == (422, "invalid_image")


async def _decode(items, limits=LIMITS, budget=None):
    async with decoded(items, limits, budget) as contents:
        return contents


def test_decoded_keeps_order_and_decodes_images_to_rgb():
    items = parse_inputs(["a", {"image": png_data_url(colour=(0, 0, 255))}, "b"], LIMITS)
    contents = asyncio.run(_decode(items))
    assert contents[0] == "a" and contents[2] == "b"
    assert contents[1].mode == "RGB" and np.asarray(contents[1])[0, 0].tolist() == [0, 0, 255]


def test_a_lone_surrogate_text_is_422_before_any_model_sees_it():
    err = refusal(parse_inputs, ["fine", "bad \ud800 text"], LIMITS)  # what json.loads makes of "\ud800"
    assert (err.status, err.code, err.param) == (422, "invalid_input", "input[1]")


def _png_header_only(width: int, height: int) -> bytes:
    """The first bytes of a width x height PNG: the header says the size, the pixel data is cut off."""
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG")
    return buf.getvalue()[:200]


def test_image_size_is_judged_on_the_header_before_decoding():
    bomb = _png_header_only(4000, 4000)  # 16 M pixels announced; the data would not even decode
    err = refusal(image_pixels, bomb, LIMITS, "input[0]")
    assert (err.status, err.code) == (413, "image_too_large") and "4000x4000" in err.message


def test_images_that_fit_alone_but_not_together_are_413_for_the_request():
    items = parse_inputs([{"image": png_data_url(32)}] * 3, LIMITS)  # 3 x 1024 pixels > 2048 per request
    with pytest.raises(ApiError) as info:
        asyncio.run(_decode(items))
    assert (info.value.status, info.value.code) == (413, "too_many_pixels")


def test_a_request_holds_its_pixels_of_the_replica_budget_while_its_images_are_in_use():
    budget = PixelBudget(capacity=10 * 32 * 32, wait_s=1)
    items = parse_inputs([{"image": png_data_url(32)}, {"image": png_data_url(16)}], LIMITS)

    async def use():
        async with decoded(items, LIMITS, budget):
            held = budget.held
        return held, budget.held

    assert asyncio.run(use()) == (32 * 32 + 16 * 16, 0)


def test_formats_outside_the_accepted_list_are_refused_even_when_pil_reads_them():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="EPS")  # PIL opens EPS through Ghostscript
    assert Image.open(io.BytesIO(buf.getvalue())).format == "EPS"
    err = refusal(image_pixels, buf.getvalue(), LIMITS, "input[0]")
    assert (err.status, err.code) == (422, "invalid_image")


def test_bearer_auth_is_off_without_a_key():
    check_bearer(None, None)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic c2VjcmV0", "Bearer wrong"])
def test_bearer_auth_refuses_missing_or_wrong_keys_with_401(header):
    assert refusal(check_bearer, header, key_digest("secret")).status == 401


def test_bearer_auth_accepts_the_key():
    check_bearer("Bearer secret", key_digest("secret"))
    check_bearer("bearer  secret ", key_digest("secret"))
