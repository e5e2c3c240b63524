"""Whole slides read lazily (core/slide.py), the napari reader of them, and scripts/make_slide.py, on real fields."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_leukemia.core.io import read_image
from napari_leukemia.core.slide import SlideError, is_pyramidal, is_slide, open_slide

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def field(shared_data) -> np.ndarray:
    """A real smear field, tiled 2 x 2 with mirrored copies: (960, 1280, 3) uint8."""
    image = read_image(shared_data / "bccd" / "JPEGImages" / "BloodImage_00023.jpg")
    top = np.concatenate([image, image[:, ::-1]], axis=1)
    return np.ascontiguousarray(np.concatenate([top, top[::-1]], axis=0))


def write_pyramid(path: Path, image: np.ndarray, levels: int = 3, pixel_size: float | None = 0.25) -> list[np.ndarray]:
    """A tiled pyramidal OME-TIFF (levels in SubIFDs, zlib, 256 px tiles) of ``image``; returns the levels."""
    pyramid = [image]
    for _ in range(1, levels):
        pyramid.append(np.ascontiguousarray(pyramid[-1][::2, ::2]))
    metadata = {"axes": "YXS" if image.ndim == 3 else "YX"}
    if pixel_size:
        metadata.update(PhysicalSizeX=pixel_size, PhysicalSizeY=pixel_size)
    photometric = "rgb" if image.ndim == 3 else "minisblack"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(image, subifds=levels - 1, tile=(256, 256), photometric=photometric, compression="zlib", metadata=metadata)
        for level in pyramid[1:]:
            tif.write(level, subfiletype=1, tile=(256, 256), photometric=photometric, compression="zlib", metadata=None)
    return pyramid


@pytest.fixture(scope="module")
def pyramid_file(tmp_path_factory, field):
    path = tmp_path_factory.mktemp("slide") / "field.ome.tif"
    return path, write_pyramid(path, field)


def test_pyramidal_ome_tiff_levels_regions_and_pixel_size(pyramid_file):
    path, pyramid = pyramid_file
    with open_slide(path) as slide:
        assert slide.name == "field.ome.tif" and slide.source == str(path)
        assert [lv.shape for lv in slide.levels] == [p.shape for p in pyramid] == [(960, 1280, 3), (480, 640, 3), (240, 320, 3)]
        assert all(isinstance(lv, da.Array) and lv.dtype == np.uint8 for lv in slide.levels)
        assert slide.downsamples == [1.0, 2.0, 4.0]
        assert slide.shape == (960, 1280)
        assert slide.pixel_size == (0.25, 0.25)
        region = slide.read_region(0, 300, 500, 400, 600)
        assert region.dtype == np.uint8 and region.flags.c_contiguous
        np.testing.assert_array_equal(region, pyramid[0][300:700, 500:1100])
        np.testing.assert_array_equal(slide.read_region(2, 0, 0, 240, 320), pyramid[2])
        # a tile at the edge comes back clipped
        np.testing.assert_array_equal(slide.read_region(1, 400, 600, 256, 256), pyramid[1][400:, 600:])
        np.testing.assert_array_equal(np.asarray(slide.levels[0]), pyramid[0])
        with pytest.raises(SlideError, match="field.ome.tif: no level 3"):
            slide.read_region(3, 0, 0, 10, 10)
        with pytest.raises(SlideError, match="outside level 0"):
            slide.read_region(0, 960, 0, 10, 10)
    assert is_slide(path) and is_pyramidal(path)


def test_plain_tiff_is_one_level_and_not_claimed(tmp_path, field):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, field, photometric="rgb")
    assert not is_slide(path) and not is_pyramidal(path)
    assert is_slide(path, side=1000)  # larger than the threshold: a slide for the analysis
    with open_slide(path) as slide:
        assert len(slide.levels) == 1 and slide.downsamples == [1.0] and slide.pixel_size is None
        np.testing.assert_array_equal(slide.read_region(0, 10, 20, 30, 40), field[10:40, 20:60])
    from napari_leukemia._napari.reader import get_reader

    assert get_reader(str(path)) is None
    assert get_reader(str(ROOT / "pyproject.toml")) is None
    assert not is_slide(ROOT / "pyproject.toml") and not is_slide(tmp_path / "missing.tif")


def test_console_arrays(field):
    slide = open_slide(field)
    assert slide.name == "array" and slide.source == "" and slide.pixel_size is None
    np.testing.assert_array_equal(slide.read_region(0, 5, 6, 70, 80), field[5:75, 6:86])
    # channels first, as a dask array, in a list of levels (a napari multiscale layer's data)
    levels = [da.from_array(np.moveaxis(field, -1, 0), chunks=(3, 256, 256)), field[::2, ::2]]
    slide = open_slide(levels, name="layer")
    assert [lv.shape for lv in slide.levels] == [(960, 1280, 3), (480, 640, 3)] and slide.downsamples == [1.0, 2.0]
    np.testing.assert_array_equal(slide.read_region(0, 900, 1200, 100, 100), field[900:, 1200:])
    # RGBA: alpha dropped; 16-bit: scaled to 8 bits
    rgba = np.concatenate([field, np.full(field.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(open_slide(rgba).read_region(0, 0, 0, 50, 50), field[:50, :50])
    np.testing.assert_array_equal(open_slide(field.astype(np.uint16) * 257).read_region(0, 0, 0, 50, 50), field[:50, :50])
    with pytest.raises(SlideError, match="layer: grayscale"):
        open_slide(field[..., 0], name="layer")
    with pytest.raises(SlideError, match="more planes"):
        open_slide(np.stack([field, field]))


def test_ome_zarr(tmp_path, field):
    import zarr

    path = tmp_path / "field.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    levels = [np.moveaxis(field, -1, 0), np.moveaxis(field[::2, ::2], -1, 0)]
    for i, level in enumerate(levels):
        group.create_array(str(i), data=level, chunks=(3, 256, 256))
    group.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [1, 0.25 * 2**i, 0.25 * 2**i]}]}
                     for i in range(2)],
    }]
    assert is_slide(path) and is_pyramidal(path)
    slide = open_slide(path)
    assert [lv.shape for lv in slide.levels] == [(960, 1280, 3), (480, 640, 3)]
    assert slide.pixel_size == (0.25, 0.25) and slide.downsamples == [1.0, 2.0]
    np.testing.assert_array_equal(slide.read_region(1, 100, 100, 50, 60), field[::2, ::2][100:150, 100:160])
    assert not is_slide(tmp_path) and not is_pyramidal(tmp_path)
    with pytest.raises(SlideError, match=f"{tmp_path.name}: not an OME-Zarr image"):
        open_slide(tmp_path)


def test_reader_opens_a_multiscale_layer(pyramid_file):
    from napari.layers import Image

    from napari_leukemia._napari.reader import get_reader, read_slide

    path, pyramid = pyramid_file
    assert get_reader(str(path)) is read_slide
    [(data, kwargs, kind)] = read_slide(str(path))
    assert kind == "image" and kwargs["rgb"] and kwargs["multiscale"] and kwargs["name"] == "field"
    assert [d.shape for d in data] == [p.shape for p in pyramid]
    meta = kwargs["metadata"]["napari_leukemia"]
    assert meta["path"] == str(path) and meta["pixel_size_um"] == [0.25, 0.25] and meta["downsamples"] == [1.0, 2.0, 4.0]
    layer = Image(data, **kwargs)
    assert layer.multiscale and layer.rgb and layer.level_shapes.tolist() == [[960, 1280], [480, 640], [240, 320]]


def test_manifest_claims_slide_names_only():
    """napari matches readers by name: plain TIFFs (most smear fields) must stay unambiguous for napari's reader."""
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    ours = lambda name: "napari-leukemia" in [r.plugin_name for r in pm.iter_compatible_readers([f"/data/{name}"])]
    assert all(map(ours, ["a.ome.tif", "a.ome.tiff", "a.svs", "a.ndpi", "a.ptif", "a.ome.zarr"]))
    assert not any(map(ours, ["a.tif", "a.tiff", "a.jpg", "a.png", "a.zarr"]))


def test_corrupt_grayscale_and_missing_files_are_refused_by_name(tmp_path, pyramid_file, field):
    gray = tmp_path / "gray.ome.tif"
    write_pyramid(gray, field[..., 1])
    assert is_pyramidal(gray)  # the reader claims it, and then says why it cannot open it
    with pytest.raises(SlideError, match="gray.ome.tif: grayscale"):
        open_slide(gray)
    garbage = tmp_path / "garbage.svs"
    garbage.write_bytes(b"II*\0" + np.random.default_rng(0).bytes(2000))
    assert not is_slide(garbage)
    with pytest.raises(SlideError, match="garbage.svs: "):
        open_slide(garbage)
    truncated = tmp_path / "truncated.ome.tif"
    data = pyramid_file[0].read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(SlideError, match="truncated.ome.tif: "):
        with open_slide(truncated) as slide:
            slide.read_region(0, 0, 0, 960, 1280)
    with pytest.raises(SlideError, match="missing.ndpi: no such file"):
        open_slide(tmp_path / "missing.ndpi")


def test_make_slide_script_writes_a_pyramidal_mosaic_of_real_fields(tmp_path, shared_data):
    spec = importlib.util.spec_from_file_location("make_slide", ROOT / "scripts" / "make_slide.py")
    make_slide = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_slide)
    out = tmp_path / "mosaic.ome.tif"
    make_slide.main(["--side", "1100", "--source", "deepapl", "--fields", "4", "--blank", "0.3", "--compression", "zlib",
                     "--tile", "256", "--pixel-size", "0.1", "--data", str(shared_data), "--out", str(out)])
    layout = json.loads(Path(f"{out}.json").read_text())
    grid = np.array(layout["grid"])
    assert grid.shape == (4, 4) and layout["levels"] == 3 and len(layout["fields"]) == 4
    assert (grid == -1).any() and (grid >= 0).any()
    with open_slide(out) as slide:
        assert [lv.shape for lv in slide.levels] == [(1100, 1100, 3), (550, 550, 3), (275, 275, 3)]
        assert slide.pixel_size == pytest.approx((0.1, 0.1))
        for (ci, cj), k in np.ndenumerate(grid[:3, :3]):
            cell = slide.read_region(0, ci * 352, cj * 352, 352, 352)
            if k < 0:
                assert (cell == np.array(layout["background"], np.uint8)).all()
            else:
                image = read_image(shared_data / layout["fields"][k])
                y, x = (image.shape[0] - 352) // 2, (image.shape[1] - 352) // 2
                # the script decodes with OpenCV, read_image with Pillow: JPEG decoders may differ by a level or two
                assert np.abs(cell.astype(int) - image[y : y + 352, x : x + 352]).max() <= 3
