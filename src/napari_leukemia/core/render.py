"""Class colours and result overlays: the one home of the colours every view of a result uses.

Qt-free: numpy and scikit-image only.
"""

from __future__ import annotations

import numpy as np

#: Colour of the binary case's leukaemic class and the first leukaemic class otherwise: Okabe-Ito vermillion
#: (#D55E00). The first colours of both palettes are Okabe-Ito's, told apart by colour-blind readers.
LEUKEMIC_RGBA = (0.835, 0.369, 0.0, 1.0)
#: Colour of the binary case's normal class and the first other class otherwise: Okabe-Ito blue (#0072B2).
NORMAL_RGBA = (0.0, 0.447, 0.698, 1.0)
#: Colour of cells left out of the analysis (and of labels without a row in the cell table).
EXCLUDED_RGBA = (0.6, 0.6, 0.6, 1.0)
EXCLUDED = "excluded"

#: Leukaemic classes, in order: vermillion, orange, reddish purple, yellow (Okabe-Ito), then crimson and pink.
WARM = (LEUKEMIC_RGBA, (0.902, 0.624, 0.0, 1.0), (0.8, 0.475, 0.655, 1.0), (0.941, 0.894, 0.259, 1.0),
        (0.6, 0.05, 0.2, 1.0), (1.0, 0.45, 0.55, 1.0))
#: Other classes, in order: blue, sky blue, bluish green (Okabe-Ito), then indigo, cyan, navy, lime, teal (enough
#: for the seven normal cell types of the cell-type classifier).
COOL = (NORMAL_RGBA, (0.337, 0.706, 0.914, 1.0), (0.0, 0.62, 0.451, 1.0), (0.35, 0.3, 0.85, 1.0),
        (0.0, 0.85, 0.85, 1.0), (0.1, 0.15, 0.5, 1.0), (0.65, 0.9, 0.3, 1.0), (0.1, 0.45, 0.4, 1.0))


def class_colors(classes, leukemic) -> dict[str, tuple[float, float, float, float]]:
    """RGBA colour (0..1) of every class, plus ``"excluded"``.

    Leukaemic classes take warm colours (vermillion first), the others cool colours (blue first), each in
    the order of ``classes``; so the binary case is vermillion for the leukaemic and blue for the normal
    class, safe for colour-blind readers. Palettes repeat beyond six leukaemic or eight other classes.

    Parameters
    ----------
    classes : sequence of str
        Class names, in the classifier's order.
    leukemic : sequence of str
        The leukaemic ones among them.

    Returns
    -------
    dict of str to (r, g, b, a)
        One entry per class and one for ``"excluded"`` (gray) unless a class has that name.
    """
    leukemic = set(leukemic)
    colors = {}
    n_warm = n_cool = 0
    for c in classes:
        if c in leukemic:
            colors[c] = WARM[n_warm % len(WARM)]
            n_warm += 1
        else:
            colors[c] = COOL[n_cool % len(COOL)]
            n_cool += 1
    colors.setdefault(EXCLUDED, EXCLUDED_RGBA)
    return colors


def overlay(image, labels, cells, classes, leukemic, *, thickness: int = 3) -> np.ndarray:
    """The smear with each cell outlined in the colour of its predicted class.

    Parameters
    ----------
    image : (H, W[, C]) array
        The smear (anything :func:`napari_leukemia.core.io.as_rgb8` accepts).
    labels : (H, W) int array
        Cells (ids up to :data:`~.preprocess.MAX_LABEL`, gaps allowed), 0 background.
    cells : pandas.DataFrame
        The per-cell table (:func:`napari_leukemia.core.pipeline.cell_table`): ``label`` and
        ``predicted_class``. Labels without a row are outlined in the ``"excluded"`` gray.
    classes, leukemic : sequence of str
        As for :func:`class_colors`.
    thickness : int
        Outline width in pixels (odd; 3 by default).

    Returns
    -------
    (H, W, 3) ndarray of uint8

    Raises
    ------
    ValueError
        When the labels do not match the image or are refused by :func:`~.preprocess.label_ids`.
    """
    from skimage.morphology import dilation
    from skimage.segmentation import find_boundaries, relabel_sequential

    from .io import as_rgb8
    from .preprocess import label_ids

    out = as_rgb8(image).copy()
    labels = np.asarray(labels)
    if labels.shape != out.shape[:2]:
        raise ValueError(f"labels of shape {labels.shape} do not match the image's {out.shape[:2]}")
    present = label_ids(labels)
    if not len(present):
        return out
    labels = relabel_sequential(labels)[0].astype(np.int32)  # cell present[k] is k + 1: small tables for any ids
    colors = class_colors(classes, leukemic)
    index = {name: i for i, name in enumerate(colors)}
    palette = np.array([rgba[:3] for rgba in colors.values()]) * 255
    lut = np.full(len(present) + 1, index[EXCLUDED], np.int64)
    ids = np.asarray(cells["label"], np.int64)
    at = np.minimum(np.searchsorted(present, ids), len(present) - 1)
    keep = present[at] == ids
    lut[at[keep] + 1] = [index.get(str(c), index[EXCLUDED]) for c in np.asarray(cells["predicted_class"], object)[keep]]
    edges = np.where(find_boundaries(labels, mode="inner"), labels, 0)
    if thickness > 1:  # the largest label wins where outlines of touching cells meet
        edges = dilation(edges, np.ones((thickness, thickness), bool))
    drawn = edges > 0
    out[drawn] = np.round(palette[lut[edges[drawn]]]).astype(np.uint8)
    return out
