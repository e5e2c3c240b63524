"""Single-cell images (issue 21): the centre cell at any magnification, the centred-crop fallback, removed
backgrounds, neighbours cut by the frame, and batches of images classified together."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from napari_leukemia import analyze_smear
from napari_leukemia.core.config import AnalysisConfig, SegmentConfig
from napari_leukemia.core.io import ImageError

SINGLE = AnalysisConfig(device="cpu", gradcam=False, single_cell=True)
#: The box of the bundled DeepAPL sample's cell (rows 74-289, columns 83-268 of its 363 x 360 pixels).
SAMPLE_CELL_BOX = (74, 83, 289, 268)
FACTORS = (1, 1.5, 2, 3)


def zoom(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` at ``factor`` times its magnification (as scripts/single_cell_scale.py resizes)."""
    from skimage.transform import rescale

    if factor == 1:
        return image
    return (rescale(image, factor, channel_axis=-1) * 255).round().astype(np.uint8)


def centre_covered(labels: np.ndarray) -> bool:
    h, w = labels.shape
    return bool(labels[h // 2, w // 2])


@pytest.fixture(scope="module")
def models(classifier_path, segmenter_path):
    from napari_leukemia.core.model import load_classifier
    from napari_leukemia.core.segment import load_segmenter

    return {"classifier": load_classifier(classifier_path, "cpu"), "segmenter": load_segmenter(segmenter_path, "cpu")}


@pytest.fixture(scope="module")
def sample_result(deepapl_image, models):
    return analyze_smear(deepapl_image, config=SINGLE, **models)


def check_scales(image, models, factors=FACTORS):
    """The cell found by segmentation at every factor, covering the centre, its area growing with the factor's
    square, its call the same."""
    results = {f: analyze_smear(zoom(image, f), config=SINGLE, **models) for f in factors}
    base = results[factors[0]]
    for f, r in results.items():
        assert r.labels.max() == 1 and len(r.cells) == 1, f
        assert r.cells["found_by"].tolist() == ["segmentation"] == [r.summary["found_by"]], f
        assert centre_covered(r.labels), f
        grown = r.cells["area"].iloc[0] / base.cells["area"].iloc[0] / (f / factors[0]) ** 2
        assert 0.75 < grown < 1.33, (f, grown)
        assert abs(r.cells["p_leukemic"].iloc[0] - base.cells["p_leukemic"].iloc[0]) < 0.1, f
    return results


def test_the_sample_cell_is_found_alone_at_every_magnification(deepapl_image, models, sample_result):
    assert sample_result.summary["single_cell"] and sample_result.summary["message"] == ""
    assert sample_result.summary["leukocytes"] == 1 and sample_result.cells["leukemic"].iloc[0]  # the sample blast
    check_scales(deepapl_image, models, (1, 2, 3))


@pytest.mark.slow
@pytest.mark.parametrize("path", [
    "deepapl/images/Patient_102/blast_no_lineage_spec/BL_19003082.jpg",
    "deepapl/images/Patient_102/lymphocyte/LY_19003096.jpg",
    "deepapl/images/Patient_102/neutrophil_segmented/SNE_19003086.jpg",
    "pbc/images/monocyte/MO_101258.jpg",
    "pbc/images/eosinophil/EO_1007.jpg",
])
def test_real_cells_of_two_labs_are_found_at_every_magnification(shared_data, models, path):
    from napari_leukemia.core.io import read_image

    check_scales(read_image(shared_data / path), models)


@pytest.mark.parametrize("factor", [1, 2])
def test_a_cell_touching_the_frame_is_found_whole(deepapl_image, models, sample_result, factor):
    """The sample cut to its cell's box (a cell filling the frame, touching it on every side). The box is fixed (as
    the segmenter of 2026-11-24 drew the cell), so that the crop does not depend on the segmenter under test."""
    r0, c0, r1, c1 = SAMPLE_CELL_BOX
    tight = np.ascontiguousarray(deepapl_image[r0 + 2 : r1 - 2, c0 + 2 : c1 - 2])
    result = analyze_smear(zoom(tight, factor), config=SINGLE, **models)
    labels = result.labels > 0
    assert result.cells["found_by"].iloc[0] == "segmentation" and centre_covered(result.labels)
    assert labels[0].any() and labels[-1].any() and labels[:, 0].any() and labels[:, -1].any()
    assert labels.mean() > 0.7  # the whole cell, not its nucleus or a piece of it
    assert abs(result.cells["p_leukemic"].iloc[0] - sample_result.cells["p_leukemic"].iloc[0]) < 0.15


def zheng1_cell(shared_data, stem):
    """A zheng1 crop and its expert mask (0 outside the cell)."""
    from napari_leukemia.core.io import read_image
    from napari_leukemia.core.mask_eval import read_mask

    folder = shared_data / "zheng1" / "images"
    return read_image(folder / f"{stem}.png"), read_mask(folder / f"{stem}_mask.png")


def test_cells_that_fill_the_frame_are_found_whole_against_expert_masks(shared_data, models):
    """zheng1 crops (CellaVision, another lab) cut to the box of their expert whole-cell mask: the cell touches the
    frame on every side, and its nucleus alone looks like a cell at a smaller scale."""
    from napari_leukemia.core.mask_eval import score_cell

    ious = []
    for stem in ("005", "010", "015", "020"):
        image, mask = zheng1_cell(shared_data, stem)
        ys, xs = np.nonzero(mask)
        box = (slice(ys.min() + 2, ys.max() - 1), slice(xs.min() + 2, xs.max() - 1))
        result = analyze_smear(np.ascontiguousarray(image[box]), config=SINGLE, **models)
        assert result.cells["found_by"].iloc[0] == "segmentation", stem
        ious.append(score_cell(result.labels > 0, mask[box])["iou"])
    assert min(ious) > 0.5 and np.mean(ious) > 0.8, ious  # 005 is found at 0.57: a part of its cytoplasm left out


def test_a_large_cell_is_found_whole_not_its_nucleus(shared_data, models):
    """zheng1 crops as they are (a cell 0.6-0.8 of the frame): at the stain's estimate a nucleus or a lobe of it lies
    at the centre (IoU to the expert's whole cell 0.03-0.16 before larger scales were looked at)."""
    from napari_leukemia.core.mask_eval import score_cell

    ious = []
    for stem in ("050", "045", "060", "090"):
        image, mask = zheng1_cell(shared_data, stem)
        ious.append(score_cell(analyze_smear(image, config=SINGLE, **models).labels > 0, mask)["iou"])
    assert min(ious) > 0.75, ious


def test_neighbours_cut_by_the_frame_are_left_out(deepapl_image, bccd_image, models):
    from napari_leukemia.core.segment import segment_leukocytes
    from napari_leukemia.core.stain import stain_segment

    # the BCCD leukocyte cut in half by each side of the frame, the DeepAPL sample's cell at the centre
    ys, xs = np.nonzero(stain_segment(bccd_image) == 1)
    cy, cx = int(ys.mean()), int(xs.mean())
    h = deepapl_image.shape[0]
    r0 = min(max(cy - h // 2, 0), bccd_image.shape[0] - h)
    left, right = bccd_image[r0 : r0 + h, cx : cx + 90], bccd_image[r0 : r0 + h, cx - 90 : cx]
    image = np.ascontiguousarray(np.concatenate([left, deepapl_image, right], axis=1))
    assert segment_leukocytes(image, model=models["segmenter"]).max() >= 2
    result = analyze_smear(image, config=SINGLE, **models)
    cols = np.nonzero((result.labels > 0).any(axis=0))[0]
    assert result.labels.max() == 1 and centre_covered(result.labels)
    assert cols.min() >= 90 and cols.max() < 90 + deepapl_image.shape[1]


def test_no_cell_found_falls_back_to_the_centred_crop_and_says_so(bccd_image, models):
    from napari_leukemia.core.datasets import cell_box

    red_cells_only = np.ascontiguousarray(bccd_image[300:, :300])
    result = analyze_smear(red_cells_only, name="rbc.png", config=SINGLE, **models)
    assert result.cells["found_by"].tolist() == ["centre crop"] == [result.summary["found_by"]]
    assert "rbc.png: no cell found at the centre" in result.summary["message"]
    margin = models["classifier"].info.crop.margin
    assert np.array_equal(result.labels, cell_box(red_cells_only.shape[:2], margin))
    assert result.summary["leukocytes"] == 1 and 0 <= result.cells["p_leukemic"].iloc[0] <= 1


@pytest.mark.parametrize("colour", ["black", "white"])
def test_a_removed_background_is_painted_as_a_smear(deepapl_image, models, sample_result, colour):
    from scipy import ndimage as ndi

    cell = ndi.binary_dilation(sample_result.labels > 0, iterations=4)
    cut_out = deepapl_image.copy()
    cut_out[~cell] = 0 if colour == "black" else 255
    result = analyze_smear(cut_out, config=SINGLE, **models)
    assert result.summary["removed_background"] == colour
    assert result.cells["found_by"].iloc[0] == "segmentation"
    a, b = result.labels > 0, sample_result.labels > 0
    assert (a & b).sum() / (a | b).sum() > 0.8
    # The same call. The probability moves: the shipped classifier's feature SVM measures texture (GLCM) over the
    # cell's whole box, which a flat painted background smooths (its part 0.85 -> 0.45; the network's 0.93 -> 0.67; the
    # classifier shipped before session 20 moved 0.94 -> 0.89). Model card, "Limits"; training log, session 20.
    before, after = sample_result.cells["p_leukemic"].iloc[0], result.cells["p_leukemic"].iloc[0]
    assert before >= 0.5 and after >= 0.5 and abs(after - before) < 0.4


def test_nothing_but_a_removed_background_is_refused_by_name(models):
    speck = np.zeros((200, 200, 3), np.uint8)
    speck[88:112, 88:112] = (120, 60, 150)  # a speck of stain on a removed background (1.4% of it): no cell
    with pytest.raises(ImageError, match="empty.png: the image is a uniform black background"):
        analyze_smear(speck, name="empty.png", config=SINGLE, **models)


def test_a_folder_is_classified_in_batches_with_found_by_in_every_row(tmp_path, capsys, deepapl_image, bccd_image,
                                                                       classifier_path, sample_result):
    from napari_leukemia import cli

    files = {"cell.png": deepapl_image, "cell_2x.png": zoom(deepapl_image, 2),
             "rbc.png": np.ascontiguousarray(bccd_image[300:, :300])}
    for name, image in files.items():
        Image.fromarray(image).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    args = ["analyze", *(tmp_path / n for n in ["cell.png", "broken.png", "cell_2x.png", "rbc.png"]), "--out", out,
            "--single-cell", "--no-gradcam", "--device", "cpu", "--quiet", "--classifier", classifier_path]
    code = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 1 and "broken.png" in err and "rbc.png: no cell found at the centre" in err
    with open(out / "summary.csv", newline="") as fh:
        rows = {r["stem"]: r for r in csv.DictReader(fh)}
    assert {k: (r["status"], r["found_by"], r["leukocytes"]) for k, r in rows.items()} == {
        "cell": ("ok", "segmentation", "1"), "broken": ("failed", "", ""), "cell_2x": ("ok", "segmentation", "1"),
        "rbc": ("ok", "centre crop", "1")}
    with open(out / "cell" / "cells.csv", newline="") as fh:
        (cell,) = list(csv.DictReader(fh))
    assert cell["found_by"] == "segmentation"
    assert float(cell["p_leukemic"]) == pytest.approx(sample_result.cells["p_leukemic"].iloc[0], abs=0.02)


def test_batches_give_each_image_the_call_it_gets_alone(deepapl_image, bccd_image, models):
    from napari_leukemia.core.single_cell import analyze_single_cells

    speck = np.zeros((200, 200, 3), np.uint8)
    speck[88:112, 88:112] = (120, 60, 150)
    images = [deepapl_image, speck, zoom(deepapl_image, 1.5), bccd_image[300:, :300]]
    config = AnalysisConfig(device="cpu", single_cell=True, batch_size=2, segment=SegmentConfig())
    together = analyze_single_cells(images, ["a", "black", "b", "c"], config=config, **models)
    assert isinstance(together[1], ImageError) and "black" in str(together[1])
    for image, result in zip(images, together):
        if isinstance(result, Exception):
            continue
        alone = analyze_smear(image, config=config, **models)
        assert np.array_equal(alone.labels, result.labels)
        assert result.cells["p_leukemic"].iloc[0] == pytest.approx(alone.cells["p_leukemic"].iloc[0], abs=0.02)
        assert result.gradcam.shape == image.shape[:2] and result.gradcam.max() > 0
