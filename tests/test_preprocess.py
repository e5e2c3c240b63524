import numpy as np
import pytest

from napari_leukemia.core.config import CropConfig
from napari_leukemia.core.preprocess import centre_cell, crop_cells, to_tensor


def test_one_crop_per_cell_centred_with_margin(deepapl_image):
    labels = np.zeros(deepapl_image.shape[:2], np.int32)
    labels[100:200, 120:180] = 3  # a 100 x 60 cell
    crops = crop_cells(deepapl_image, labels, CropConfig(size=64, margin=0.25))
    assert crops.images.shape == (1, 64, 64, 3) and crops.images.dtype == np.uint8
    assert list(crops.labels) == [3]
    r0, c0, r1, c1 = crops.windows[0]
    assert (r1 - r0, c1 - c0) == (150, 150)  # square: longer side * (1 + 2 * margin)
    assert ((r0 + r1) // 2, (c0 + c1) // 2) == (150, 150)


def test_cells_at_the_border_are_padded_not_shifted(deepapl_image):
    labels = np.zeros(deepapl_image.shape[:2], np.int32)
    labels[:40, :40] = 1
    crops = crop_cells(deepapl_image, labels, CropConfig(size=32, margin=0.5))
    assert crops.windows[0][0] < 0 and crops.windows[0][1] < 0
    assert crops.images.shape == (1, 32, 32, 3)


def test_mask_outside_blanks_other_cells(deepapl_image):
    labels = np.zeros(deepapl_image.shape[:2], np.int32)
    labels[150:210, 150:210] = 1
    plain = crop_cells(deepapl_image, labels, CropConfig(size=64, margin=1.0)).images[0]
    masked = crop_cells(deepapl_image, labels, CropConfig(size=64, margin=1.0, mask_outside=True)).images[0]
    assert np.array_equal(plain[28:36, 28:36], masked[28:36, 28:36])
    assert masked[:4, :4].std() < plain[:4, :4].std() + 1e-6


def test_mismatched_labels_and_missing_ids_are_refused(deepapl_image):
    with pytest.raises(ValueError, match="does not match"):
        crop_cells(deepapl_image, np.zeros((10, 10), np.int32))
    labels = np.zeros(deepapl_image.shape[:2], np.int32)
    labels[10:20, 10:20] = 1
    with pytest.raises(ValueError, match="label 2"):
        crop_cells(deepapl_image, labels, ids=[2])


def test_no_cells_no_crops(deepapl_image):
    crops = crop_cells(deepapl_image, np.zeros(deepapl_image.shape[:2], np.int32), CropConfig(size=32))
    assert crops.images.shape == (0, 32, 32, 3)


def test_centre_cell():
    labels = np.zeros((100, 100), np.int32)
    labels[40:60, 40:60] = 5
    labels[0:10, 0:10] = 2
    assert centre_cell(labels) == 5
    labels[labels == 5] = 0
    assert centre_cell(labels) == 2
    assert centre_cell(np.zeros((9, 9), np.int32)) == 0


def test_normalisation_matches_config():
    cfg = CropConfig(size=16)
    x = to_tensor(np.full((2, 16, 16, 3), 255, np.uint8), cfg)
    assert x.shape == (2, 3, 16, 16)
    assert np.allclose(x[0, :, 0, 0].numpy(), [(1 - m) / s for m, s in zip(cfg.mean, cfg.std)], atol=1e-6)


def test_config_round_trip_and_validation():
    cfg = CropConfig(size=96, margin=0.3, mask_outside=True)
    assert CropConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown settings"):
        CropConfig.from_dict({"size": 96, "colour": "red"})
    with pytest.raises(ValueError, match="at least 16"):
        CropConfig(size=8)


def test_fixed_window_keeps_cell_size(deepapl_image):
    labels = np.zeros(deepapl_image.shape[:2], np.int32)
    labels[100:140, 100:140] = 1  # small cell
    labels[200:300, 200:300] = 2  # large cell
    cfg = CropConfig(size=64, window=3.0)
    crops = crop_cells(deepapl_image, labels, cfg, red_cell_px=50)
    sides = crops.windows[:, 2] - crops.windows[:, 0]
    assert list(sides) == [150, 150]  # 3 red cells of 50 px, whatever the cell
    fitted = crop_cells(deepapl_image, labels, CropConfig(size=64)).windows
    assert fitted[1, 2] - fitted[1, 0] > fitted[0, 2] - fitted[0, 0]


def test_fixed_window_measures_red_cells_or_says_it_cannot(deepapl_image):
    from napari_leukemia.core.datasets import DEEPAPL_RED_CELL_PX
    from napari_leukemia.core.preprocess import measure_red_cells

    assert 0.75 * DEEPAPL_RED_CELL_PX < measure_red_cells(deepapl_image) < 1.33 * DEEPAPL_RED_CELL_PX
    blank = np.full((200, 200, 3), 230, np.uint8)
    labels = np.zeros((200, 200), np.int32)
    labels[80:120, 80:120] = 1
    with pytest.raises(ValueError, match="no red cells"):
        crop_cells(blank, labels, CropConfig(size=32, window=3.0))
    with pytest.raises(ValueError, match="window"):
        CropConfig(window=0.5)


def test_large_label_ids_with_gaps_keep_their_ids(deepapl_image):
    from skimage.segmentation import relabel_sequential

    labels = np.zeros(deepapl_image.shape[:2], np.int64)
    labels[20:60, 30:90], labels[100:150, 100:130], labels[200:260, 40:80] = 7, 2**31 - 1, 70_000
    crops = crop_cells(deepapl_image, labels, CropConfig(size=32, mask_outside=True))
    assert list(crops.labels) == [7, 70_000, 2**31 - 1]
    again = crop_cells(deepapl_image, relabel_sequential(labels)[0].astype(np.int32), CropConfig(size=32, mask_outside=True))
    assert np.array_equal(crops.images, again.images) and np.array_equal(crops.windows, again.windows)
    assert list(crop_cells(deepapl_image, labels, CropConfig(size=32), ids=[2**31 - 1]).labels) == [2**31 - 1]


@pytest.mark.parametrize("dtype, big", [(np.int64, 2**31), (np.int64, 2**40), (np.uint32, 2**32 - 1), (np.uint64, 2**63 + 5)])
def test_label_ids_beyond_int32_are_refused_not_wrapped(deepapl_image, dtype, big):
    labels = np.zeros(deepapl_image.shape[:2], dtype)
    labels[20:60, 30:90] = 1
    labels[100:150, 100:130] = big
    with pytest.raises(ValueError, match=f"cell id {big} exceeds 2147483647.*relabel_sequential"):
        crop_cells(deepapl_image, labels, CropConfig(size=32))


def test_negative_or_float_labels_and_ids_are_refused(deepapl_image):
    labels = np.zeros(deepapl_image.shape[:2], np.int32)
    labels[:5, :5] = -3
    with pytest.raises(ValueError, match="must not be negative, got -3"):
        crop_cells(deepapl_image, labels)
    with pytest.raises(ValueError, match="must be integers, got float64"):
        crop_cells(deepapl_image, labels.astype(float))
    with pytest.raises(ValueError, match="cell ids must be integers"):
        crop_cells(deepapl_image, np.abs(labels), ids=[3.0])
