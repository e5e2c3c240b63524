from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from napari_leukemia.core.io import MIN_BRIGHTEST, MIN_SIDE, ImageError, as_rgb8, atomic_path, read_image
from napari_leukemia.samples import sample_path


def test_reads_sample_as_rgb8():
    im = read_image(sample_path("bccd"))
    assert im.dtype == np.uint8 and im.shape == (480, 640, 3)


def test_rgba_16bit_float_channels_first(bccd_image):
    rgba = np.dstack([bccd_image, np.full(bccd_image.shape[:2], 255, np.uint8)])
    assert np.array_equal(as_rgb8(rgba), bccd_image)
    sixteen = bccd_image.astype(np.uint16) * 257
    assert np.abs(as_rgb8(sixteen).astype(int) - bccd_image).max() <= 1
    assert np.abs(as_rgb8(bccd_image / 255.0).astype(int) - bccd_image).max() <= 1
    assert np.array_equal(as_rgb8(np.moveaxis(bccd_image, -1, 0)), bccd_image)


@pytest.mark.parametrize(
    "array, problem",
    [
        (np.zeros((0, 0, 3), np.uint8), "empty"),
        (np.zeros((10, 10, 3), np.uint8), "too small"),
        (np.full((64, 64, 3), 200, np.uint8), "uniform"),
        (np.zeros((64, 64, 5), np.uint8), "expected a 2D"),
        (np.full((64, 64, 3), 200, np.uint8) + np.arange(64, dtype=np.uint8)[:, None, None], "grayscale"),
        (np.arange(64 * 64, dtype=np.uint8).reshape(64, 64), "grayscale"),
        (np.dstack([np.arange(64 * 64).reshape(64, 64) % 40] * 3).astype(np.uint8), "almost black"),
        (np.ones((64, 64, 3), bool), "boolean"),
        (np.zeros((4, 64, 64, 3), np.uint8), "expected a 2D"),
        (np.full((64, 64), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_arrays_are_refused_with_their_name(array, problem):
    with pytest.raises(ImageError, match=f"my layer: .*{problem}"):
        as_rgb8(array, "my layer")


def test_truncated_corrupt_missing_and_empty_files(tmp_path):
    data = sample_path("bccd").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"not an image at all" * 10)
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name, problem in [("cut.jpg", "cannot be decoded"), ("junk.png", "cannot be decoded"),
                          ("empty.jpg", "empty"), ("missing.jpg", "no such file")]:
        with pytest.raises(ImageError, match=f"{name}.*{problem}"):
            read_image(tmp_path / name)


def test_16bit_tiff_and_palette_png(tmp_path, bccd_image):
    write_tiff(tmp_path / "s.tif", bccd_image.astype(np.uint16) * 257)
    assert np.abs(read_image(tmp_path / "s.tif").astype(int) - bccd_image).max() <= 1
    Image.fromarray(bccd_image).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == bccd_image.shape


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("precious")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "precious"
    assert list(tmp_path.iterdir()) == [target]


# ------------------------------------------------------------------ scanners' files: one test per case of the issue


def write_tiff(path, array, **kwargs):
    """tifffile.imwrite with the photometric a scanner writes: RGB(A) for 3 or 4 samples, else gray."""
    rgb = array.ndim >= 3 and array.shape[-1] in (3, 4)
    tifffile.imwrite(path, array, photometric="rgb" if rgb else "minisblack", **kwargs)


def assert_close(a, b, tol=1):
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    assert np.abs(a.astype(int) - b).max() <= tol


def test_12bit_data_is_scaled_by_its_bit_depth_not_by_65535(tmp_path, bccd_image):
    twelve = np.round(bccd_image / 255 * 4095).astype(np.uint16)
    write_tiff(tmp_path / "plain.tif", twelve)  # BitsPerSample 16: the maximum (<= 4095) says 12 bits
    write_tiff(tmp_path / "packed.tif", twelve, bitspersample=12)  # BitsPerSample 12
    for name in ("plain.tif", "packed.tif"):
        assert_close(read_image(tmp_path / name), bccd_image)
    write_tiff(tmp_path / "tagged.tif", twelve // 2, extratags=[(341, "H", 1, 2047, True)])  # SMaxSampleValue
    assert_close(read_image(tmp_path / "tagged.tif"), bccd_image)
    ten = np.round(bccd_image / 255 * 1023).astype(np.uint16)
    assert_close(as_rgb8(ten), bccd_image)
    eleven = ten * 2  # 11-bit data: the rule takes it as 12-bit, the tag (``white``) knows better
    assert_close(as_rgb8(eleven), np.round(eleven / 4095 * 255).astype(np.uint8))
    assert_close(as_rgb8(eleven, white=2046), bccd_image)


def test_grayscale_images_are_refused_asking_for_a_stained_colour_image(tmp_path, bccd_image):
    gray = bccd_image[..., 1]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([gray] * 3)).save(tmp_path / "gray_rgb.jpg", quality=80)
    write_tiff(tmp_path / "gray16.tif", gray.astype(np.uint16) * 257)
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")  # PIL mode I;16
    for name in ("gray.png", "gray_rgb.jpg", "gray16.tif", "gray16.png"):
        with pytest.raises(ImageError, match=f"{name}: a grayscale image.*colour \\(Wright-Giemsa / MGG stained\\)"):
            read_image(tmp_path / name)


def test_cmyk_ycbcr_palette_and_transparent_modes_are_converted_to_rgb(tmp_path, bccd_image):
    smear = Image.fromarray(bccd_image)
    smear.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    smear.convert("CMYK").save(tmp_path / "cmyk.tif")  # tifffile gives CMYK samples: PIL converts
    smear.convert("YCbCr").save(tmp_path / "ycbcr.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as im:
        assert im.mode == "CMYK"
    assert np.abs(read_image(tmp_path / "cmyk.jpg").astype(int) - bccd_image).mean() < 4
    assert_close(read_image(tmp_path / "cmyk.tif"), bccd_image)
    assert np.abs(read_image(tmp_path / "ycbcr.jpg").astype(int) - bccd_image).mean() < 4
    palette = smear.convert("P")
    palette.info["transparency"] = int(np.asarray(palette)[0, 0])
    palette.save(tmp_path / "p_transparent.png")
    out = read_image(tmp_path / "p_transparent.png")
    see_through = np.asarray(palette) == palette.info["transparency"]
    assert see_through.any() and (out[see_through] == 255).all()  # transparent palette entry: white


def test_large_scans_read_without_pil_warning_and_oversized_ones_are_refused(tmp_path, bccd_image, monkeypatch):
    import warnings

    from PIL import Image as PILImage

    from napari_leukemia.core import io

    Image.fromarray(bccd_image).save(tmp_path / "scan.png")
    write_tiff(tmp_path / "scan.tif", bccd_image)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # as if the scan were far over PIL's bomb limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_close(read_image(tmp_path / "scan.png"), bccd_image, 0)
    assert PILImage.MAX_IMAGE_PIXELS == 1000  # PIL's own limit is restored
    write_tiff(tmp_path / "stack.tif", np.stack([bccd_image] * 2))
    monkeypatch.setattr(io, "MAX_PIXELS", 640 * 480)
    with pytest.raises(ImageError, match=r"stack.tif: holds \(2, 480, 640, 3\) samples.*one field per file"):
        read_image(tmp_path / "stack.tif")
    monkeypatch.setattr(io, "MAX_PIXELS", 640 * 479)
    for name in ("scan.png", "scan.tif"):
        with pytest.raises(ImageError, match=f"{name}: image is 640x480 px, larger than .*not fit in memory"):
            read_image(tmp_path / name)


def test_a_directory_named_like_an_image_is_refused_by_name(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(ImageError, match="x.jpg: is a directory"):
        read_image(tmp_path / "x.jpg")


def test_rgba_16bit_rgb_float_and_boolean_files(tmp_path, bccd_image):
    half = np.dstack([bccd_image, np.full(bccd_image.shape[:2], 128, np.uint8)])
    Image.fromarray(half).save(tmp_path / "half.png")
    over_white = np.round(bccd_image * (128 / 255) + 255 * (127 / 255)).astype(np.uint8)
    assert_close(read_image(tmp_path / "half.png"), over_white)  # composited over white
    Image.fromarray(np.dstack([bccd_image, np.zeros(bccd_image.shape[:2], np.uint8)])).save(tmp_path / "clear.png")
    assert_close(read_image(tmp_path / "clear.png"), bccd_image, 0)  # alpha zero everywhere: ignored
    write_tiff(tmp_path / "rgb16.tif", bccd_image.astype(np.uint16) * 257)
    assert_close(read_image(tmp_path / "rgb16.tif"), bccd_image)
    write_tiff(tmp_path / "rgba16.tif", np.dstack([bccd_image.astype(np.uint16) * 16, np.full((480, 640), 65535)])
                     .astype(np.uint16))  # 12-bit colour, 16-bit alpha: each scaled by its own range
    assert_close(read_image(tmp_path / "rgba16.tif"), bccd_image)
    for name, data in [("unit.tif", bccd_image / 255), ("bytes.tif", bccd_image.astype(np.float64)),
                       ("overshoot.tif", bccd_image / 250), ("signed.tif", bccd_image.astype(np.float32) - 128)]:
        write_tiff(tmp_path / name, data.astype(np.float32))
        expected = bccd_image if name != "overshoot.tif" else np.clip(np.round(bccd_image / 250 * 255), 0, 255)
        if name == "signed.tif":  # negative values: stretched from the minimum to the maximum
            expected = np.round((bccd_image.astype(float) - bccd_image.min()) * 255 / np.ptp(bccd_image))
        assert_close(read_image(tmp_path / name), expected.astype(np.uint8))
    write_tiff(tmp_path / "mask.tif", bccd_image[..., 0] > 128)
    Image.fromarray(bccd_image[..., 0] > 128).save(tmp_path / "mask.png")  # PIL mode 1
    for name in ("mask.tif", "mask.png"):
        with pytest.raises(ImageError, match=f"{name}: a boolean mask"):
            read_image(tmp_path / name)
    write_tiff(tmp_path / "dark.tif", (bccd_image // 8).astype(np.uint16), extratags=[(341, "H", 1, 255, True)])
    with pytest.raises(ImageError, match="dark.tif: image is almost black"):
        read_image(tmp_path / "dark.tif")


# ------------------------------------------------------------------ properties over dtypes, shapes and value ranges

DTYPES = ["uint8", "uint16", "int16", "int32", "float32", "float64", "bool"]
CHANNELS = [None, 1, 3, 3, 4, 4]  # colour more often: the checks after the shape ones are reached


@st.composite
def arrays(draw, smear):
    """Arrays of every dtype and shape: noise, flat, gray or a crop of the smear, in a drawn value range."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    h, w = draw(st.integers(MIN_SIDE - 1, 44)), draw(st.integers(MIN_SIDE - 1, 44))
    channels = draw(st.sampled_from(CHANNELS))
    pattern = draw(st.sampled_from(["smear", "smear", "noise", "gray", "flat"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype.kind == "b":
        return rng.random((h, w) if channels is None else (h, w, channels)) > 0.5, None
    if dtype.kind == "f":
        lo, hi = draw(st.sampled_from([(0, 1), (0, 255), (-1, 1), (0, 4095), (-1e4, 1e4), (0, 1e-3), (0, 1e9)]))
    else:
        info = np.iinfo(dtype)
        lo = draw(st.sampled_from([0, 0, int(info.min)]))
        hi = draw(st.sampled_from([1, 255, 1023, 4095, 65535, int(info.max)]))
        hi = min(hi, int(info.max))
    y, x = draw(st.integers(0, smear.shape[0] - h)), draw(st.integers(0, smear.shape[1] - w))
    unit = {"smear": smear[y:y + h, x:x + w] / 255, "noise": rng.random((h, w, 3)), "flat": np.full((h, w, 3), 0.7),
            "gray": np.repeat(rng.random((h, w, 1)), 3, axis=-1)}[pattern]
    if channels == 4:
        unit = np.dstack([unit, np.ones((h, w))])
    elif channels is not None and channels < 3:
        unit = unit[..., :channels] if channels else unit[..., 1]
    if channels is None:
        unit = unit[..., 1]
    values = lo + unit * (float(hi) - lo)
    array = np.round(values).astype(dtype) if dtype.kind in "ui" else values.astype(dtype)
    expected = None
    scanner_range = hi in (255, 1023, 4095, 65535) or (hi, dtype.kind) == (1, "f")
    if pattern == "smear" and channels in (3, 4) and min(h, w) >= MIN_SIDE and lo == 0 and scanner_range:
        expected = smear[y:y + h, x:x + w]  # a scanner's bit depth (or [0, 1] floats): the smear comes back
    return array, expected


def check_result(call, name):
    """The result of ``call()``: an (H, W, 3) uint8 colour image that is not black, or an ImageError naming ``name``."""
    try:
        out = call()
    except ImageError as err:
        assert str(err).startswith(str(name)), err
        return None
    assert out.ndim == 3 and out.shape[-1] == 3 and out.dtype == np.uint8
    assert out.max() >= MIN_BRIGHTEST and out.max() > out.min()  # never a silently black (or flat) image
    return out


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_as_rgb8_gives_a_colour_uint8_image_or_an_image_error(data, deepapl_image):
    array, expected = data.draw(arrays(deepapl_image))
    out = check_result(lambda: as_rgb8(array, "layer"), "layer")
    if out is not None:
        assert out.shape[:2] == array.shape[:2]
    if expected is not None:
        assert out is not None
        assert_close(out, expected)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), writer=st.sampled_from(["tifffile", "PIL"]))
def test_files_written_by_tifffile_or_pil_read_back_as_as_rgb8_converts_them(data, writer, deepapl_image):
    import tempfile

    array, _ = data.draw(arrays(deepapl_image))
    with tempfile.TemporaryDirectory() as folder:
        if writer == "tifffile":
            path = Path(folder) / "field.tif"
            write_tiff(path, array)
        else:
            squeezed = array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array
            try:
                im = Image.fromarray(squeezed)
            except (TypeError, ValueError):  # a dtype and shape PIL has no mode for
                return
            path = Path(folder) / ("field.png" if im.mode in ("1", "L", "RGB", "RGBA", "I;16") else "field.tif")
            im.save(path)
        out = check_result(lambda: read_image(path), path)
        try:
            direct = as_rgb8(array)
        except ImageError:
            direct = None
        if writer == "tifffile" or array.dtype in (np.uint8, bool):  # lossless and no change of dtype
            assert (out is None) == (direct is None)
            if out is not None:
                assert np.array_equal(out, direct)
