import numpy as np
import pytest
from PIL import Image

from napari_leukemia.core.io import ImageError, as_rgb8, atomic_path, read_image
from napari_leukemia.samples import sample_path


def test_reads_sample_as_rgb8():
    im = read_image(sample_path("bccd"))
    assert im.dtype == np.uint8 and im.shape == (480, 640, 3)


def test_rgba_grayscale_16bit_float_channels_first(bccd_image):
    rgba = np.dstack([bccd_image, np.full(bccd_image.shape[:2], 255, np.uint8)])
    assert np.array_equal(as_rgb8(rgba), bccd_image)
    gray = as_rgb8(bccd_image[..., 1])
    assert gray.shape == bccd_image.shape and np.array_equal(gray[..., 0], gray[..., 2])
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
    import tifffile

    tifffile.imwrite(tmp_path / "s.tif", bccd_image.astype(np.uint16) * 257)
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
