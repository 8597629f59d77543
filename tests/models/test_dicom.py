"""Reading DICOM: the display pipeline, colour, frames, compression and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from krypton.models import ImageDecodeError, ImageTooLargeError, decode_image
from krypton.models.dicom import UnsupportedTransferSyntaxError, is_dicom
from krypton.models.images import image_size
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


@pytest.mark.parametrize(("mode", "photometric", "scale"), [
    pytest.param("RGB", "RGB", 1, id="rgb-8-bit"),
    pytest.param("L", "MONOCHROME2", 1, id="monochrome2-8-bit"),
    pytest.param("L", "MONOCHROME2", 257, id="monochrome2-16-bit"),
])
def test_dicom_built_from_png_pixels_decodes_to_the_png_pixels(mode: str, photometric: str,
                                                              scale: int) -> None:
    stored = files.example_pixels(mode=mode).astype(np.uint16 if scale > 1 else np.uint8)
    stored = stored * np.asarray(scale, dtype=stored.dtype)
    np.testing.assert_array_equal(decode_image(files.build(stored, photometric)),
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
                                       rescale=(1.0, 32768.0)))
    np.testing.assert_allclose(decoded, decode_image(files.png_of(gray)), atol=1e-6)


def test_window_maps_its_centre_to_mid_gray_and_clips_outside() -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    decoded = decode_image(files.build(ramp, "MONOCHROME2", window=(128.0, 64.0)))[0, :, 0]
    assert decoded[:90].max() == 0.0 and decoded[170:].min() == 1.0
    assert decoded[128] == pytest.approx(0.5, abs=0.02)


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
