"""Reading DICOM: the display pipeline, colour, frames, compression and refusals."""

from __future__ import annotations

import io
import resource
import threading

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from krypton.benchmarks import samples
from krypton.models import ImageDecodeError, ImageTooLargeError, decode_image
from krypton.models.dicom import UnsupportedTransferSyntaxError, inflated_size, is_dicom
from krypton.models.images import decode, image_size
from krypton.models.windows import AppliedWindow, Window
from tests import dicom_files as files


@pytest.mark.parametrize("name", [
    "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm",
    "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm", "SC_rgb_jpeg_gdcm.dcm",
    "examples_palette.dcm", "image_dfl.dcm",
])
def test_shipped_dicom_file_decodes_to_rgb_in_the_unit_range(name: str) -> None:
    pixels = decode_image(files.shipped(name))
    assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.float32
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0 and np.ptp(pixels) > 0


def test_dicom_is_recognised_by_content_not_by_name() -> None:
    assert is_dicom(files.shipped("CT_small.dcm"))
    assert not is_dicom(files.png_of(files.example_pixels()))


FULL_16_BITS = Window.spanning(0, 65535)


@pytest.mark.parametrize(("mode", "photometric", "scale", "window"), [
    pytest.param("RGB", "RGB", 1, None, id="rgb-8-bit"),
    pytest.param("L", "MONOCHROME2", 1, None, id="monochrome2-8-bit"),
    pytest.param("L", "MONOCHROME2", 257, FULL_16_BITS, id="monochrome2-16-bit-full-window"),
])
def test_dicom_built_from_png_pixels_decodes_to_the_png_pixels(
        mode: str, photometric: str, scale: int, window: Window | None) -> None:
    stored = files.example_pixels(mode=mode).astype(np.uint16 if scale > 1 else np.uint8)
    stored = stored * np.asarray(scale, dtype=stored.dtype)
    np.testing.assert_array_equal(decode_image(files.build(stored, photometric), window=window),
                                  decode_image(files.png_of(stored)))


def test_monochrome1_is_inverted() -> None:
    gray = files.example_pixels(mode="L")
    np.testing.assert_allclose(decode_image(files.build(255 - gray, "MONOCHROME1")),
                               decode_image(files.png_of(gray)), atol=1e-6)


def test_rescale_slope_and_intercept_apply_before_the_full_range() -> None:
    # Signed storage shifted by the intercept reads as the unsigned image does.
    gray = files.example_pixels(mode="L").astype(np.uint16) * 257
    signed = (gray.astype(np.int32) - 32768).astype(np.int16)
    decoded = decode_image(files.build(signed, "MONOCHROME2", signed=True,
                                       rescale=(1.0, 32768.0)), window=FULL_16_BITS)
    np.testing.assert_allclose(decoded, decode_image(files.png_of(gray)), atol=1e-6)


def test_window_maps_its_centre_to_mid_gray_and_clips_outside() -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    decoded = decode_image(files.build(ramp, "MONOCHROME2", window=(128.0, 64.0)))[0, :, 0]
    assert decoded[:90].max() == 0.0 and decoded[170:].min() == 1.0
    assert decoded[128] == pytest.approx(0.5, abs=0.02)


GRAYSCALE_SHIPPED = [
    "CT_small.dcm", "JPEG2000.dcm", "JPGExtended.dcm", "693_J2KI.dcm", "MR_small.dcm",
    "MR_small_jp2klossless.dcm", "JPEGLSNearLossless_16.dcm", "examples_overlay.dcm",
    "image_dfl.dcm", "liver_1frame.dcm", "rtdose_1frame.dcm",
]


@pytest.mark.parametrize("name", GRAYSCALE_SHIPPED)
def test_shipped_grayscale_dicom_reaches_the_model_with_contrast(name: str) -> None:
    # The full range of 16 stored bits gave CT_small a standard deviation of 0.006.
    assert decode_image(files.shipped(name)).std() > 0.15


def _dicom_linear(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1, written out as the standard does, to [0, 1]."""
    y = ((values - (center - 0.5)) / (width - 1) + 0.5)
    y[values <= center - 0.5 - (width - 1) / 2] = 0.0
    y[values > center - 0.5 + (width - 1) / 2] = 1.0
    return y


def test_a_models_window_is_applied_exactly_over_the_files() -> None:
    ramp = np.tile(np.arange(0, 4096, 4, dtype=np.uint16), (4, 1))
    data = files.build(ramp, "MONOCHROME2", window=(2000.0, 4000.0), rescale=(1.0, -1024.0))
    decoded = decode(data, window=Window(center=40.0, width=400.0))
    expected = _dicom_linear(ramp[0].astype(np.float64) - 1024.0, 40.0, 400.0)
    np.testing.assert_allclose(decoded.pixels[0, :, 0], expected, atol=1e-6)
    assert decoded.window == AppliedWindow("model", 40.0, 400.0)


def test_without_a_window_deep_pixels_span_the_images_own_range() -> None:
    ramp = np.tile(np.arange(1000, 1200, dtype=np.uint16), (4, 1))
    decoded = decode(files.build(ramp, "MONOCHROME2"))
    gray = decoded.pixels[0, :, 0]
    assert decoded.window is not None and decoded.window.source == "image"
    assert gray[0] == 0.0 and gray[-1] == 1.0 and gray[100] == pytest.approx(0.5, abs=0.01)


def test_the_image_choice_ignores_the_files_window() -> None:
    ramp = np.tile(np.arange(1000, 1200, dtype=np.uint16), (4, 1))
    data = files.build(ramp, "MONOCHROME2", window=(0.0, 100.0))
    assert decode(data).window == AppliedWindow("file", 0.0, 100.0)
    assert decode(data, window="image").pixels[0, 100, 0] == pytest.approx(0.5, abs=0.01)


def test_eight_bit_pixels_without_a_window_keep_their_stored_range() -> None:
    gray = files.example_pixels(mode="L")
    decoded = decode(files.build(gray, "MONOCHROME2"))
    assert decoded.window is not None and decoded.window.source == "stored-range"
    assert decoded.window.replay() is None


def test_a_replayed_image_window_maps_a_smaller_decode_the_same_way() -> None:
    data = files.shipped("CT_small.dcm")
    full = decode(data)
    assert full.window is not None
    again = decode(data, max_side=32, window=full.window.replay())
    assert again.window == AppliedWindow("model", full.window.center, full.window.width)
    np.testing.assert_allclose(again.pixels.mean(), full.pixels.mean(), atol=0.02)


def test_colour_dicom_has_no_window() -> None:
    assert decode(files.shipped("SC_rgb_rle.dcm")).window is None


def test_a_deflated_file_inflating_past_the_decoding_budget_is_refused_uninflated() -> None:
    bomb = samples.deflate_bomb(1024)  # 1 GiB of zeros in 1 MB
    assert len(bomb) < 2**20 + 2**16
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageTooLargeError, match="inflates to more than"):
        decode_image(bomb)
    with pytest.raises(ImageTooLargeError, match="inflates to more than"):
        image_size(bomb)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024


def test_a_deflated_file_within_the_budget_decodes() -> None:
    assert decode_image(files.shipped("image_dfl.dcm")).std() > 0.1
    assert decode_image(samples.deflate_bomb(16)).shape == (64, 64, 3)


@pytest.mark.parametrize("attributes", [
    pytest.param({"RescaleSlope": b"ZQXrs ", "RescaleIntercept": b"ZQXri "}, id="rescale"),
    pytest.param({"WindowCenter": b"ZQXwc ", "WindowWidth": b"ZQXww "}, id="window"),
])
def test_display_attributes_that_are_not_numbers_are_refused_as_unreadable(
        attributes: dict[str, bytes]) -> None:
    dataset = pydicom.dcmread(io.BytesIO(files.build(
        np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (8, 1)), "MONOCHROME2")))
    for keyword, value in attributes.items():
        tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
        dataset[tag] = RawDataElement(tag, "DS", len(value), value, 0, False, True)
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    with pytest.raises(ImageDecodeError, match="not numbers"):
        decode_image(buffer.getvalue())


def _ct_small_without(change: str) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(files.shipped("CT_small.dcm")))
    if change == "planar-configuration":
        dataset.SamplesPerPixel = 3
        dataset.PhotometricInterpretation = "RGB"
    elif change == "pixel-data":
        del dataset.PixelData
    else:
        dataset.WindowCenter = 40
        if "WindowWidth" in dataset:
            del dataset.WindowWidth
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("change", ["planar-configuration", "pixel-data"])
def test_a_header_missing_what_its_pixels_need_is_refused_as_unreadable(change: str) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(_ct_small_without(change))


def test_a_window_centre_without_its_width_is_no_window() -> None:
    decoded = decode(_ct_small_without("window-width"))
    assert decoded.window is not None and decoded.window.source == "image"
    assert float(decoded.pixels.std()) > 0.05


def test_multi_frame_file_needs_a_frame() -> None:
    with pytest.raises(ImageDecodeError, match="30 frames"):
        decode_image(files.shipped("examples_ybr_color.dcm"))


def test_multi_frame_file_decodes_the_frame_asked_for() -> None:
    data = files.shipped("examples_ybr_color.dcm")
    first, last = decode_image(data, frame=1), decode_image(data, frame=30)
    assert first.shape == (240, 320, 3) and not np.array_equal(first, last)


@pytest.mark.parametrize("frame", [0, 31])
def test_frame_outside_the_file_is_refused(frame: int) -> None:
    with pytest.raises(ImageDecodeError, match="frame"):
        decode_image(files.shipped("examples_ybr_color.dcm"), frame=frame)


def test_unsupported_transfer_syntax_is_refused_naming_it() -> None:
    mpeg2 = "1.2.840.10008.1.2.4.100"
    data = files.with_transfer_syntax(files.shipped("MR_small_RLE.dcm"), mpeg2)
    with pytest.raises(UnsupportedTransferSyntaxError, match=mpeg2):
        decode_image(data)


def test_header_size_is_read_without_decoding_and_bounded() -> None:
    data = files.shipped("JPEG2000.dcm")
    assert image_size(data) == (1024, 256)
    with pytest.raises(ImageTooLargeError, match="limit"):
        image_size(data, max_pixels=1000)


def test_large_dicom_is_reduced_like_other_images() -> None:
    pixels = decode_image(files.shipped("JPEG2000.dcm"), max_side=256)
    assert pixels.shape == (256, 64, 3)


def test_a_deflated_file_with_a_byte_after_its_stream_is_counted_and_ends() -> None:
    """pydicom pads an odd-length deflated stream with a byte; counting must stop at the
    stream's end (it once spun on the padding for ever)."""
    padded = samples.deflate_bomb(8) + b"\x00"
    done: list[int] = []
    counting = threading.Thread(target=lambda: done.append(inflated_size(padded)), daemon=True)
    counting.start()
    counting.join(timeout=30)
    assert done and done[0] > 8 * 2**20
