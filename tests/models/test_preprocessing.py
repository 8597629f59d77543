"""Decoding every supported image kind, model-input tensors, and patch colours."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from krypton.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDecodeError,
    InvalidArgumentError,
    Preprocessing,
    decode_image,
    patch_value,
    to_model_input,
)

MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)
STD = np.array(IMAGENET_STD, dtype=np.float32)
PREP = Preprocessing(size=32)


@pytest.fixture(scope="module")
def retina() -> npt.NDArray[np.uint8]:
    """A real RGB fundus photograph, cropped off-centre so it is not square or symmetric."""
    photo: npt.NDArray[np.uint8] = skdata.retina()  # type: ignore[no-untyped-call]
    return np.ascontiguousarray(photo[400:560, 300:500])


@pytest.fixture(scope="module")
def microaneurysms() -> npt.NDArray[np.uint8]:
    """A real 8-bit grayscale retinal image."""
    image: npt.NDArray[np.uint8] = skdata.microaneurysms()  # type: ignore[no-untyped-call]
    return image


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG announcing ``width x height`` but holding almost no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


# decode_image -----------------------------------------------------------------------------

INPUT_KINDS: dict[str, Callable[[Path], object]] = {
    "bytes": lambda path: path.read_bytes(),
    "str-path": str,
    "pathlib-path": lambda path: path,
}


@pytest.mark.parametrize("as_input", list(INPUT_KINDS.values()), ids=list(INPUT_KINDS))
def test_decode_image_rgb_png_is_exact_float_copy(
    as_input: Callable[[Path], object], retina: npt.NDArray[np.uint8], tmp_path: Path
) -> None:
    path = tmp_path / "retina.png"
    Image.fromarray(retina).save(path)
    decoded = decode_image(as_input(path))  # type: ignore[arg-type]
    assert decoded.dtype == np.float32 and decoded.shape == retina.shape
    np.testing.assert_array_equal(decoded, retina.astype(np.float32) / 255)


def test_decode_image_grayscale_png_is_replicated_to_three_channels(
    microaneurysms: npt.NDArray[np.uint8],
) -> None:
    decoded = decode_image(_encode(Image.fromarray(microaneurysms), "PNG"))
    expected = microaneurysms.astype(np.float32) / 255
    assert decoded.shape == (*microaneurysms.shape, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[:, :, channel], expected)


def test_decode_image_rgba_png_drops_alpha(retina: npt.NDArray[np.uint8]) -> None:
    alpha = np.full(retina.shape[:2], 128, dtype=np.uint8)
    rgba = Image.fromarray(np.dstack([retina, alpha]), mode="RGBA")
    decoded = decode_image(_encode(rgba, "PNG"))
    np.testing.assert_array_equal(decoded, retina.astype(np.float32) / 255)


def test_decode_image_palette_png_gives_palette_colours(retina: npt.NDArray[np.uint8]) -> None:
    palette = Image.fromarray(retina).quantize(colors=16)
    decoded = decode_image(_encode(palette, "PNG"))
    expected = np.asarray(palette.convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize(("fmt", "dtype"), [
    pytest.param("PNG", "<u2", id="png"),
    pytest.param("TIFF", "<u2", id="tiff-little-endian"),
    pytest.param("TIFF", ">u2", id="tiff-big-endian"),
])
def test_decode_image_16_bit_grayscale_is_scaled_by_65535(fmt: str, dtype: str) -> None:
    pixels = np.array([[0, 257, 32768], [65535, 1000, 40000]], dtype=dtype)
    decoded = decode_image(_encode(Image.fromarray(pixels), fmt))
    np.testing.assert_allclose(decoded[:, :, 0], pixels / 65535.0, rtol=0, atol=1e-7)
    assert decoded[1, 0].tolist() == [1.0, 1.0, 1.0] and decoded[0, 0].tolist() == [0.0] * 3


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"], ids=["png", "tiff"])
def test_decode_image_16_bit_copy_of_8_bit_image_decodes_alike(
    fmt: str, microaneurysms: npt.NDArray[np.uint8]
) -> None:
    wide = microaneurysms.astype(np.uint16) * 257  # 255 -> 65535
    decoded = decode_image(_encode(Image.fromarray(wide), fmt))
    np.testing.assert_allclose(decoded[:, :, 1], microaneurysms / 255.0, rtol=0, atol=1e-6)


def test_decode_image_32_bit_integer_tiff_is_scaled_by_its_range() -> None:
    pixels = np.array([[0, 2**31 - 1], [2**30, 2**16]], dtype=np.int32)
    decoded = decode_image(_encode(Image.fromarray(pixels), "TIFF"))
    np.testing.assert_allclose(decoded[:, :, 2], pixels / (2**31 - 1), rtol=1e-6, atol=0)


def test_decode_image_float_tiff_in_unit_range_is_kept() -> None:
    pixels = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    decoded = decode_image(_encode(Image.fromarray(pixels), "TIFF"))
    np.testing.assert_array_equal(decoded[:, :, 0], pixels)


def test_decode_image_float_tiff_outside_unit_range_raises() -> None:
    pixels = np.array([[0.0, 300.0]], dtype=np.float32)
    with pytest.raises(ImageDecodeError, match=r"outside \[0, 1\]"):
        decode_image(_encode(Image.fromarray(pixels), "TIFF"))


def test_decode_image_rgb_tiff_is_exact(retina: npt.NDArray[np.uint8]) -> None:
    decoded = decode_image(_encode(Image.fromarray(retina), "TIFF", compression="tiff_lzw"))
    np.testing.assert_array_equal(decoded, retina.astype(np.float32) / 255)


def test_decode_image_jpeg_is_close_to_original(retina: npt.NDArray[np.uint8]) -> None:
    decoded = decode_image(_encode(Image.fromarray(retina), "JPEG", quality=95))
    assert decoded.shape == retina.shape
    assert np.abs(decoded - retina / 255.0).mean() < 0.01


def test_decode_image_exif_rotation_is_applied(retina: npt.NDArray[np.uint8]) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    encoded = _encode(Image.fromarray(retina), "JPEG", quality=95, exif=exif)
    decoded = decode_image(encoded)
    upright = np.rot90(retina, k=-1) / 255.0
    assert decoded.shape == upright.shape
    assert np.abs(decoded - upright).mean() < 0.01


@pytest.mark.parametrize("content", [
    pytest.param(b"definitely not an image", id="text"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, id="png-signature-only"),
])
def test_decode_image_non_image_bytes_raises_image_decode_error(content: bytes) -> None:
    with pytest.raises(ImageDecodeError, match="not a PNG, JPEG, TIFF image"):
        decode_image(content)


def test_decode_image_unsupported_format_raises_image_decode_error(
    retina: npt.NDArray[np.uint8],
) -> None:
    with pytest.raises(ImageDecodeError, match="not a PNG, JPEG, TIFF image"):
        decode_image(_encode(Image.fromarray(retina), "BMP"))


def test_decode_image_truncated_png_raises_chained_image_decode_error(
    retina: npt.NDArray[np.uint8],
) -> None:
    encoded = _encode(Image.fromarray(retina), "PNG")
    with pytest.raises(ImageDecodeError, match="cannot decode") as info:
        decode_image(encoded[: len(encoded) // 2])
    assert info.value.__cause__ is not None


def test_decode_image_missing_file_raises_image_decode_error(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="does not exist"):
        decode_image(tmp_path / "absent.png")


def test_decode_image_over_max_pixels_raises_image_decode_error(
    retina: npt.NDArray[np.uint8],
) -> None:
    with pytest.raises(ImageDecodeError, match="more than the limit of 1000"):
        decode_image(_encode(Image.fromarray(retina), "PNG"), max_pixels=1000)


def test_decode_image_at_max_pixels_is_accepted(retina: npt.NDArray[np.uint8]) -> None:
    height, width = retina.shape[:2]
    decoded = decode_image(_encode(Image.fromarray(retina), "PNG"), max_pixels=height * width)
    assert decoded.shape == retina.shape


def test_decode_image_huge_header_is_refused_before_decoding_pixels() -> None:
    # 8000 x 8000 = 64 Mpx: above the default limit, below Pillow's own bomb check.
    with pytest.raises(ImageDecodeError, match="8000x8000"):
        decode_image(_png_header_only(8000, 8000))


def test_decode_image_pillow_decompression_bomb_becomes_image_decode_error() -> None:
    with pytest.raises(ImageDecodeError, match="too large to decode safely"):
        decode_image(_png_header_only(20000, 20000), max_pixels=None)


@pytest.mark.parametrize("max_pixels", [0, -5, 2.5], ids=["zero", "negative", "float"])
def test_decode_image_bad_max_pixels_raises_invalid_argument(max_pixels: object) -> None:
    with pytest.raises(InvalidArgumentError, match="max_pixels"):
        decode_image(b"", max_pixels=max_pixels)  # type: ignore[arg-type]


# to_model_input -----------------------------------------------------------------------------

def test_to_model_input_gives_float32_tensor_of_model_size(
    retina: npt.NDArray[np.uint8],
) -> None:
    tensor = to_model_input(retina / 255.0, Preprocessing(size=224))
    assert (tensor.dtype, tuple(tensor.shape)) == (torch.float32, (3, 224, 224))


def test_to_model_input_mid_gray_maps_to_normalised_half() -> None:
    tensor = to_model_input(np.full((50, 70, 3), 0.5), PREP)
    expected = torch.from_numpy((0.5 - MEAN) / STD).view(3, 1, 1).expand(3, 32, 32)
    torch.testing.assert_close(tensor, expected)


def test_to_model_input_grayscale_matches_replicated_rgb(
    microaneurysms: npt.NDArray[np.uint8],
) -> None:
    gray = microaneurysms / 255.0
    torch.testing.assert_close(to_model_input(gray, PREP),
                               to_model_input(np.dstack([gray] * 3), PREP))


def test_to_model_input_at_native_size_is_exact_normalisation(
    retina: npt.NDArray[np.uint8],
) -> None:
    image = (retina[:32, :32] / 255.0).astype(np.float32)
    expected = torch.from_numpy(((image - MEAN) / STD).transpose(2, 0, 1).copy())
    torch.testing.assert_close(to_model_input(image, PREP), expected, rtol=0, atol=1e-6)


def test_to_model_input_downscale_antialiases_stripes() -> None:
    stripes = np.zeros((256, 256, 3), dtype=np.float32)
    stripes[:, ::2] = 1.0  # one-pixel stripes; naive sampling would keep only one colour
    pixels = to_model_input(stripes, PREP).numpy().transpose(1, 2, 0) * STD + MEAN
    np.testing.assert_allclose(pixels, 0.5, atol=0.02)


@pytest.mark.parametrize("image", [
    pytest.param(np.zeros((8, 8, 4)), id="four-channels"),
    pytest.param(np.zeros((8,)), id="one-dimensional"),
    pytest.param(np.zeros((1, 8, 8, 3)), id="batched"),
    pytest.param(np.zeros((0, 8, 3)), id="empty"),
    pytest.param(np.zeros((8, 8, 3), dtype=np.uint8), id="uint8"),
    pytest.param(np.full((8, 8, 3), 255.0), id="0-255-floats"),
    pytest.param(np.full((8, 8, 3), np.nan), id="nan"),
])
def test_to_model_input_bad_image_raises_invalid_argument(image: np.ndarray) -> None:
    with pytest.raises(InvalidArgumentError, match="image"):
        to_model_input(image, PREP)


# Preprocessing ----------------------------------------------------------------------------

def test_preprocessing_list_statistics_equal_tuple_ones() -> None:
    as_lists = Preprocessing(size=8, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])  # type: ignore[arg-type]
    assert as_lists == Preprocessing(size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.mark.parametrize(("options", "message"), [
    pytest.param({"size": 0}, "size", id="size-zero"),
    pytest.param({"size": 22.5}, "size", id="size-float"),
    pytest.param({"size": 8, "mean": (0.5, 0.5)}, "mean", id="mean-two-values"),
    pytest.param({"size": 8, "std": (0.2, 0.0, 0.2)}, "positive", id="std-zero"),
    pytest.param({"size": 8, "std": (0.2, float("nan"), 0.2)}, "finite", id="std-nan"),
])
def test_preprocessing_bad_field_raises_invalid_argument(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        Preprocessing(**options)  # type: ignore[arg-type]


# patch_value --------------------------------------------------------------------------------

def _normalised(rgb: tuple[float, float, float]) -> tuple[float, float, float]:
    return tuple(((np.array(rgb) - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).tolist())


@pytest.mark.parametrize(("color", "rgb"), [
    pytest.param("gray", (0.5, 0.5, 0.5), id="gray"),
    pytest.param("grey", (0.5, 0.5, 0.5), id="grey"),
    pytest.param(" Gray ", (0.5, 0.5, 0.5), id="gray-case-and-spaces"),
    pytest.param("black", (0.0, 0.0, 0.0), id="black"),
    pytest.param("white", (1.0, 1.0, 1.0), id="white"),
    pytest.param("255,0,128", (1.0, 0.0, 128 / 255), id="rgb-string"),
    pytest.param(" 10 , 20 ,30 ", (10 / 255, 20 / 255, 30 / 255), id="rgb-string-spaces"),
    pytest.param((0.2, 0.4, 0.6), (0.2, 0.4, 0.6), id="float-tuple"),
    pytest.param([0, 1, 0.5], (0.0, 1.0, 0.5), id="number-list"),
    pytest.param(np.array([0.1, 0.2, 0.3]), (0.1, 0.2, 0.3), id="numpy-array"),
])
def test_patch_value_colour_is_normalised_with_preprocessing_stats(
    color: object, rgb: tuple[float, float, float]
) -> None:
    value = patch_value(color, PREP)  # type: ignore[arg-type]
    assert isinstance(value, tuple) and len(value) == 3
    np.testing.assert_allclose(value, _normalised(rgb), rtol=1e-12)


def test_patch_value_mean_is_exactly_zero() -> None:
    assert patch_value("mean", PREP) == (0.0, 0.0, 0.0)


def test_patch_value_uses_custom_statistics() -> None:
    custom = Preprocessing(size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert patch_value("white", custom) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("color", [
    pytest.param("purple", id="unknown-name"),
    pytest.param("", id="empty"),
    pytest.param("1,2", id="two-values"),
    pytest.param("1,2,3,4", id="four-values"),
    pytest.param("256,0,0", id="above-255"),
    pytest.param("-1,0,0", id="negative"),
    pytest.param("1.5,0,0", id="float-in-string"),
    pytest.param("a,b,c", id="letters"),
    pytest.param((0.5, 0.5), id="two-floats"),
    pytest.param((1.5, 0.0, 0.0), id="float-above-one"),
    pytest.param((-0.1, 0.0, 0.0), id="float-negative"),
    pytest.param((float("nan"), 0.0, 0.0), id="nan"),
    pytest.param((True, False, True), id="booleans"),
    pytest.param(0.5, id="bare-float"),
])
def test_patch_value_bad_colour_raises_value_error(color: object) -> None:
    with pytest.raises(InvalidArgumentError, match="colour") as info:
        patch_value(color, PREP)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_normalize_treats_a_batch_as_each_image_alone() -> None:
    from krypton.models import normalize

    stats = Preprocessing(size=8)
    batch = torch.rand(2, 3, 8, 8)
    together = normalize(batch, stats)
    for image, normalised in zip(batch, together, strict=True):
        torch.testing.assert_close(normalised, normalize(image, stats))
    torch.testing.assert_close(
        normalize(torch.full((3, 1, 1), 0.485), stats)[0], torch.zeros(1, 1))
