import functools
import re

import numpy as np
import pytest

from napari_leukemia.core.boxes import detection_summary, label_boxes, match_boxes
from napari_leukemia.core.checkpoint import CheckpointError
from napari_leukemia.core.config import SegmentConfig
from napari_leukemia.core.segment import load_segmenter, segment_leukocytes
from napari_leukemia.core.stain import estimate_diameter, stain_segment


def test_stain_baseline_finds_the_sample_leukocyte(bccd_image, bccd_boxes):
    labels = stain_segment(bccd_image)
    assert labels.dtype == np.int32 and labels.shape == bccd_image.shape[:2]
    m = match_boxes(label_boxes(labels), bccd_boxes)
    assert m["tp"] == len(bccd_boxes) and m["fp"] == 0


def test_diameter_estimate_is_plausible(bccd_image, deepapl_image):
    assert 100 < estimate_diameter(bccd_image) < 300
    assert 80 < estimate_diameter(deepapl_image) < 250


def test_cellpose_model_finds_the_sample_leukocyte(bccd_image, bccd_boxes, segmenter_path):
    model = load_segmenter(segmenter_path, "cpu")
    labels = segment_leukocytes(bccd_image, SegmentConfig(), model=model)
    assert labels.dtype == np.int32 and labels.shape == bccd_image.shape[:2]
    m = match_boxes(label_boxes(labels), bccd_boxes)
    assert m["tp"] == len(bccd_boxes)
    assert list(np.unique(labels)) == list(range(labels.max() + 1))  # numbered without gaps


def test_a_second_look_at_smaller_scales_does_not_let_in_stained_debris(shared_data, segmenter_path):
    """BCCD 00111: two platelet clumps (0.11 and 0.14 of a leukocyte's area) were found at the retry's smaller
    scale, below the floor the field's own scale keeps; its one leukocyte is still found."""
    from napari_leukemia.core.boxes import read_voc_boxes
    from napari_leukemia.core.io import read_image

    image = read_image(shared_data / "bccd" / "JPEGImages" / "BloodImage_00111.jpg")
    labels = segment_leukocytes(image, SegmentConfig(), model=load_segmenter(segmenter_path, "cpu"))
    boxes = read_voc_boxes(shared_data / "bccd" / "Annotations" / "BloodImage_00111.xml")
    m = match_boxes(label_boxes(labels), boxes)
    assert m["tp"] == len(boxes) >= 1 and m["fp"] == 0
    floor = SegmentConfig().min_area_fraction * np.pi / 4 * estimate_diameter(image) ** 2
    assert np.bincount(labels.ravel())[1:].min() >= floor


def test_no_leukocytes_gives_empty_labels(bccd_image, segmenter_path):
    # the lower-left of the sample holds only red cells
    rbc_only = np.ascontiguousarray(bccd_image[300:, :300])
    model = load_segmenter(segmenter_path, "cpu")
    assert stain_segment(rbc_only).max() == 0
    assert segment_leukocytes(rbc_only, SegmentConfig(), model=model).max() == 0
    assert segment_leukocytes(rbc_only, SegmentConfig(diameter=190), model=model).max() == 0


def test_foreign_and_damaged_segmenter_files(tmp_path, segmenter_path):
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "foreign.safetensors"), metadata={"format": "other"})
    with pytest.raises(CheckpointError, match="foreign.safetensors.*not a napari-leukemia-segmenter"):
        load_segmenter(tmp_path / "foreign.safetensors", "cpu")
    data = segmenter_path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cut.safetensors.*not a readable"):
        load_segmenter(tmp_path / "cut.safetensors", "cpu")


@pytest.fixture(scope="module")
def segmenter_contents(segmenter_path):
    """Metadata and weights of the shipped segmenter, to write broken copies of."""
    from safetensors import safe_open

    with safe_open(str(segmenter_path), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


# (field, its broken metadata string or None to leave it out, what the message says is wrong)
BROKEN_SEGMENTER_METADATA = {
    "diam_mean missing": ("diam_mean", None, "is missing"),
    "diam_mean zero": ("diam_mean", "0.0", "above 0, got 0.0"),
    "diam_mean negative": ("diam_mean", "-20.0", "above 0, got -20.0"),
    "diam_mean a string": ("diam_mean", '"twenty"', "must be a number, got 'twenty'"),
    "diam_mean not JSON": ("diam_mean", "twenty", "not valid JSON"),
    "diam_mean NaN": ("diam_mean", "NaN", "finite number"),
    "nbase not JSON": ("nbase", "[2, 16, 32", "not valid JSON"),
    "nbase a string": ("nbase", '"16,32,64,128"', "list of U-Net channel widths"),
    "nbase not 2 inputs": ("nbase", "[3, 16, 32, 64, 128]", "start with the 2 input channels"),
    "nbase not integers": ("nbase", "[2, 16.5, 32, 64, 128]", "must be an integer"),
    "provenance not JSON": ("provenance", '{"trained_on": ', "not valid JSON"),
    "provenance not an object": ("provenance", "42", "must be a JSON object"),
    "architecture other": ("architecture", "unet", "must be 'cellpose3-cpnet', got 'unet'"),
}


@pytest.mark.parametrize("case", list(BROKEN_SEGMENTER_METADATA))
def test_each_broken_segmenter_metadata_field_is_refused_by_name(tmp_path, segmenter_contents, case):
    from safetensors.torch import save_file

    field, value, problem = BROKEN_SEGMENTER_METADATA[case]
    meta, state = segmenter_contents
    meta = {k: v for k, v in meta.items() if k != field}
    if value is not None:
        meta[field] = value
    save_file(state, str(tmp_path / "broken.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=rf"broken\.safetensors: metadata field '{field}' .*{problem}"):
        load_segmenter(tmp_path / "broken.safetensors", "cpu")


@pytest.mark.parametrize("fault", ["nan", "inf"])
def test_segmenter_weights_that_are_not_finite_are_refused(tmp_path, segmenter_contents, fault):
    from safetensors.torch import save_file

    meta, state = segmenter_contents
    key = next(k for k, v in state.items() if v.ndim > 1)
    broken = state[key].clone()
    broken.view(-1)[0] = float(fault)
    save_file({**state, key: broken}, str(tmp_path / "broken.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=rf"broken\.safetensors: weight '{re.escape(key)}' holds NaN or infinite"):
        load_segmenter(tmp_path / "broken.safetensors", "cpu")


def test_box_matching_counts():
    truth = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    pred = np.array([[1, 1, 10, 10], [50, 50, 60, 60]], float)
    m = match_boxes(pred, truth)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 1)
    s = detection_summary([m, match_boxes(truth, truth)])
    assert s["tp"] == 3 and s["precision"] == pytest.approx(0.75) and s["recall"] == pytest.approx(0.75)


def test_invalid_segment_config():
    with pytest.raises(ValueError, match="method"):
        SegmentConfig(method="magic")
    with pytest.raises(ValueError, match="diameter"):
        SegmentConfig(diameter=-3)


def _mosaic(image, box):
    """2 x 2 mosaic of a real field and its mirror images, with the leukocyte box in each quarter."""
    top = np.concatenate([image, image[:, ::-1]], axis=1)
    mosaic = np.ascontiguousarray(np.concatenate([top, top[::-1]], axis=0))
    h, w = mosaic.shape[:2]
    r0, c0, r1, c1 = box
    return mosaic, np.array([[r0, c0, r1, c1], [r0, w - c1, r1, w - c0],
                             [h - r1, c0, h - r0, c1], [h - r1, w - c1, h - r0, w - c0]])


@pytest.mark.parametrize("method", ["cellpose", "stain"])
def test_tiles_find_each_leukocyte_once_across_seams(bccd_image, bccd_boxes, segmenter_path, method):
    from napari_leukemia.core.tiling import segment_tiled

    mosaic, boxes = _mosaic(bccd_image, bccd_boxes[0])
    tile = 256
    seams = lambda lo, hi, size: any(lo < s < hi for s in range(tile, size, tile))
    assert all(seams(b[0], b[2], mosaic.shape[0]) or seams(b[1], b[3], mosaic.shape[1]) for b in boxes)  # seams cut every cell
    model = load_segmenter(segmenter_path, "cpu")
    whole = segment_leukocytes(mosaic, SegmentConfig(method=method), model=model)
    ticks = []
    tiled = segment_leukocytes(mosaic, SegmentConfig(method=method, tile_size=tile), model=model,
                               progress=lambda done, total: ticks.append((done, total)))
    assert ticks[-1] == (20, 20)
    assert tiled.max() == whole.max() and list(np.unique(tiled)) == list(range(tiled.max() + 1))
    m = match_boxes(label_boxes(tiled), boxes)
    assert m["tp"] == 4
    for k in range(1, whole.max() + 1):  # each cell of the untiled result is one cell of the tiled one
        ids, counts = np.unique(tiled[whole == k], return_counts=True)
        best = ids[np.argmax(counts)]
        assert best > 0
        iou = np.sum((tiled == best) & (whole == k)) / np.sum((tiled == best) | (whole == k))
        assert iou > 0.85, (k, iou)
    assert segment_tiled(np.full((600, 600, 3), 230, np.uint8), SegmentConfig(tile_size=256)).max() == 0


def test_centre_cell_judgement():
    from napari_leukemia.core.boxes import centre_cell, centre_cell_outcome

    labels = np.zeros((100, 100), np.int32)
    assert centre_cell(labels) == (0, 0)
    labels[5:15, 5:15] = 1  # far from the centre: the field's cell was missed
    assert centre_cell(labels) == (0, 0)
    labels[45:60, 40:55] = 2
    assert centre_cell(labels) == (2, 225)
    assert [centre_cell_outcome(a, 200.0) for a in (0, 90, 225, 450)] == ["missed", "split", "one", "merged"]


def test_split_touching_cuts_touching_cells_not_lobes():
    from napari_leukemia.core.stain import split_touching

    yy, xx = np.mgrid[:120, :200]
    disc = lambda cy, cx, r: (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    touching = disc(60, 60, 32) | disc(60, 118, 32)  # two round cells pressed together
    parts = split_touching(touching, touching.astype(np.int32), diameter=100)
    assert parts.max() == 2 and {parts[60, 60], parts[60, 118]} == {1, 2}
    lobes = disc(60, 70, 9) | disc(60, 100, 9) | disc(60, 130, 9)  # a neutrophil nucleus: thin lobes
    zone = np.zeros_like(lobes, np.int32)
    zone[40:80, 55:145] = 1
    assert split_touching(lobes, zone, diameter=100).max() == 1


def _touching_pair(field):
    """The field with a copy of its cell pressed against it: cut through the cell's right and left edges."""
    from scipy import ndimage as ndi

    from napari_leukemia.core.stain import nucleus_mask

    blobs, _ = ndi.label(nucleus_mask(field))
    cols = np.nonzero(blobs == np.argmax(np.bincount(blobs.ravel())[1:]) + 1)[1]
    return np.concatenate([field[:, : cols.max() + 1], field[:, cols.min() :]], axis=1)


def test_touching_cells_do_not_inflate_the_diameter_estimate(deepapl_image):
    from scipy import ndimage as ndi

    from napari_leukemia.core.stain import _dilate, _group_diameter, nucleus_mask

    single = estimate_diameter(deepapl_image)
    pair = _touching_pair(deepapl_image)
    nuc = nucleus_mask(pair)
    joined = _group_diameter(nuc, ndi.label(_dilate(nuc, 7))[0])
    assert joined > 1.3 * single  # the joined stain measures the pair as one big cell
    assert estimate_diameter(pair) == pytest.approx(single, rel=0.05)


def test_red_cell_diameter_of_the_samples(bccd_image, deepapl_image):
    from skimage import color

    from napari_leukemia.core.stain import red_cell_diameter

    # leukocytes are 1.5-3 red cells across (a BCCD neutrophil 1.5, a DeepAPL blast 2.4)
    for image in (bccd_image, deepapl_image):
        red = red_cell_diameter(image, color.rgb2lab(image))
        assert 1.2 * red < estimate_diameter(image) < 3.0 * red


@pytest.mark.slow
@pytest.mark.parametrize(
    "field, cells",
    [
        ("Patient_14/myelocyte/MY_13158489.jpg", 2),  # two myelocytes side by side
        ("Patient_08/eosinophil/EO_15615815.jpg", 2),  # an eosinophil against a neighbour
        ("Patient_62/neutrophil_segmented/SNE_13162360.jpg", 1),  # one neutrophil: its lobes are not cells
        ("Patient_33/eosinophil/EO_5986231.jpg", 1),  # one eosinophil: two fat lobes
    ],
)
def test_diameter_estimate_on_real_touching_cells_and_lobes(shared_data, field, cells):
    from scipy import ndimage as ndi

    from napari_leukemia.core.io import read_image
    from napari_leukemia.core.stain import _dilate, _group_diameter, nucleus_mask

    image = read_image(shared_data / "deepapl" / "images" / field)
    nuc = nucleus_mask(image)
    joined = _group_diameter(nuc, ndi.label(_dilate(nuc, 7))[0])
    assert estimate_diameter(image) == pytest.approx(joined / np.sqrt(cells), rel=0.1)


def test_dilation_by_distance_transform_matches_a_disk():
    from scipy import ndimage as ndi

    from napari_leukemia.core.stain import _dilate, _disk

    mask = np.random.default_rng(0).random((60, 70)) > 0.97
    for radius in (1, 4, 9):
        assert (_dilate(mask, radius) == ndi.binary_dilation(mask, _disk(radius))).all()


@pytest.mark.parametrize("method", ["cellpose", "stain"])
def test_tiny_diameter_is_refused_before_any_work(bccd_image, method):
    from napari_leukemia.core.segment import MIN_DIAMETER

    assert MIN_DIAMETER == 8
    with pytest.raises(ValueError, match="leukocyte diameter 1 px is under the minimum of 8 px"):
        segment_leukocytes(bccd_image, SegmentConfig(method=method, diameter=1))
    with pytest.raises(ValueError, match="diameter 7.5 px is under the minimum"):
        segment_leukocytes(np.zeros((3000, 3000, 3), np.uint8), SegmentConfig(method=method, diameter=7.5))  # tiled


def test_cellpose_field_is_bounded_in_pixels(segmenter_path):
    from napari_leukemia.core.segment import MAX_CELLPOSE_PIXELS, _cellpose_at

    model = load_segmenter(segmenter_path, "cpu")
    side = int(np.sqrt(MAX_CELLPOSE_PIXELS) / 2.5) + 8  # at 8 px the shipped model (20 px) enlarges 2.5x
    with pytest.raises(ValueError, match=r"enlarged 2\.5x .* over 64 million pixels: give a larger leukocyte diameter"):
        _cellpose_at(np.zeros((side, side, 2), np.float32), 8.0, SegmentConfig(), model)


def test_loading_and_running_the_segmenter_prints_no_library_warning():
    """A fresh interpreter (torch warns once per process) with every warning shown."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from napari_leukemia.core.config import SegmentConfig\n"
        "from napari_leukemia.core.segment import load_segmenter, segment_leukocytes\n"
        "from napari_leukemia.samples import load_sample\n"
        "model = load_segmenter(None, 'cpu')\n"
        "labels = segment_leukocytes(np.ascontiguousarray(load_sample('bccd')[:240, 60:320]), SegmentConfig(diameter=180), "
        "model=model)\n"
        "print('cells', labels.max())\n"
    )
    run = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("cells ")
    assert "Warning" not in run.stderr, run.stderr


def test_voc_boxes_match_the_label_in_any_case_and_name_bad_objects(tmp_path):
    from napari_leukemia.core.boxes import read_voc_boxes

    def voc(body: str):
        path = tmp_path / "f.xml"
        path.write_text(f"<annotation><object><name>RBC</name></object><object><name>WBC</name>{body}</object></annotation>")
        return path

    good = voc("<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40.5</ymax></bndbox>")
    assert read_voc_boxes(good, "wbc").tolist() == [[2, 1, 40.5, 30]]  # the RBC object's missing box does not matter
    assert read_voc_boxes(good, "Platelets").shape == (0, 4)
    cases = {
        "": "object 2 \\(WBC\\) has no <bndbox>",
        "<bndbox><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox>": "object 2 \\(WBC\\) has no <xmin>",
        "<bndbox><xmin>a</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox>": "<xmin> is not a number: 'a'",
        "<bndbox><xmin>1</xmin><ymin>nan</ymin><xmax>30</xmax><ymax>40</ymax></bndbox>": "<ymin> is not a number",
        "<bndbox><xmin>50</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox>": "maximum lies before its minimum",
    }
    for body, message in cases.items():
        with pytest.raises(ValueError, match=f"f.xml: .*{message}"):
            read_voc_boxes(voc(body), "WBC")
    (tmp_path / "g.xml").write_text("<annotation><object>")
    with pytest.raises(ValueError, match="g.xml: not a readable Pascal VOC file"):
        read_voc_boxes(tmp_path / "g.xml")


def test_diameter_estimate_survives_cuts_that_leave_only_small_pieces(shared_data):
    from napari_leukemia.core.io import read_image
    from napari_leukemia.core.stain import estimate_diameter

    # zheng1 034: the cut of its nuclear groups leaves no piece of 100 pixels (once a TypeError)
    d = estimate_diameter(read_image(shared_data / "zheng1" / "images" / "034.png"))
    assert d is None or d > 0


def test_cellpose_kernels_are_cached_on_disk(segmenter_path):
    """cellpose compiles its numba kernels on every import unless cached (5-15 s per process, per cluster worker)."""
    load_segmenter(segmenter_path, "cpu")
    from cellpose import dynamics

    assert type(dynamics.steps2D._cache).__name__ == "FunctionCache"
    import numba

    assert not isinstance(numba.njit, functools.partial)  # numba itself is left as it was


def test_stain_masks_grow_to_the_pale_cytoplasm_and_no_farther(deepapl_image, bccd_image):
    """grow_to_cytoplasm (segmenter training masks): each cell keeps its stain mask, grows by some of a rim, never
    past ``reach`` diameters, and no cell is lost or merged."""
    from scipy import ndimage as ndi

    from napari_leukemia.core.stain import grow_to_cytoplasm

    for image in (deepapl_image, bccd_image):
        d = estimate_diameter(image)
        masks = stain_segment(image, d)
        grown = grow_to_cytoplasm(image, masks, d)
        assert grown.dtype == np.int32 and set(np.unique(grown)) == set(np.unique(masks))
        assert (grown[masks > 0] == masks[masks > 0]).all()
        assert (ndi.distance_transform_edt(masks == 0)[grown > 0] <= 0.3 * d + 1).all()
        areas, grown_areas = np.bincount(masks.ravel())[1:], np.bincount(grown.ravel())[1:]
        assert (grown_areas >= areas).all() and grown_areas.sum() > areas.sum() and (grown_areas < 2 * areas).all()
    assert (grow_to_cytoplasm(deepapl_image, np.zeros(deepapl_image.shape[:2], np.int32), 100) == 0).all()
