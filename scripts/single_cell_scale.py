"""Single-cell images at several magnifications (issue 21): is the centre cell found, and is its call the same?

    OMP_NUM_THREADS=1 python scripts/single_cell_scale.py --n 100 --out docs/figures/single_cell_scale.json
    OMP_NUM_THREADS=1 python scripts/single_cell_scale.py --n 100 --crop 0.5 --out docs/figures/single_cell_scale_tight.json
    OMP_NUM_THREADS=2 python scripts/single_cell_scale.py --n 100 --speed --threads 2 --out speed_2.json

``n`` DeepAPL test fields (``split=test`` of ``../shared/data/deepapl/manifest.csv``, evenly spread over it; 360x363
px, one cell at the centre) are enlarged by each factor (``skimage.transform.rescale``, as a higher magnification
would show them; ``--crop 0.5`` first cuts each to its centre, so that the cell fills the frame) and analysed as
single-cell images (``AnalysisConfig(single_cell=True)``, no Grad-CAM), in batches. Per factor: the rate at which the
centre cell is found by segmentation (not the centred-crop fallback), the accuracy of the calls, and the change of
``p_leukemic`` against 1x (mean, 95th percentile, max, calls that flip). Research use only.

``--speed`` instead times ``napari-leukemia analyze --single-cell`` on the ``n`` 1x files (core.batch.analyze_images:
reading, segmentation, batched classification, Grad-CAM or not, writing every result): images per second, at
``--threads`` torch threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEEPAPL = ROOT.parent / "shared" / "data" / "deepapl"
FACTORS = (1, 1.5, 2, 3)


def test_fields(n: int):
    """``n`` fields of DeepAPL's test split, evenly spread over it (sorted by file), and their blast_equivalent."""
    import pandas as pd

    manifest = pd.read_csv(DEEPAPL / "manifest.csv")
    test = manifest[manifest["split"] == "test"].sort_values("file")
    picked = test.iloc[np.linspace(0, len(test) - 1, min(n, len(test))).astype(int)]
    return [DEEPAPL / f for f in picked["file"]], picked["blast_equivalent"].to_numpy()


def zoom(image: np.ndarray, factor: float) -> np.ndarray:
    from skimage.transform import rescale

    if factor == 1:
        return image
    return (rescale(image, factor, channel_axis=-1) * 255).round().astype(np.uint8)


def centre_square(image: np.ndarray, fraction: float) -> np.ndarray:
    """The centred square of ``fraction`` of the image's shorter side (1: the whole image)."""
    if fraction >= 1:
        return image
    h, w = image.shape[:2]
    side = int(round(fraction * min(h, w)))
    return np.ascontiguousarray(image[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side])


def scales(paths, truth, models, batch: int, crop: float = 1.0) -> dict:
    from napari_leukemia.core.config import AnalysisConfig
    from napari_leukemia.core.io import read_image
    from napari_leukemia.core.single_cell import analyze_single_cells

    config = AnalysisConfig(device="cpu", gradcam=False, single_cell=True, batch_size=batch)
    originals = [centre_square(read_image(p), crop) for p in paths]
    per_factor, p = {}, {}
    for f in FACTORS:
        seconds, found, p_f = 0.0, [], []
        for start in range(0, len(paths), batch):
            chunk = [zoom(im, f) for im in originals[start : start + batch]]
            t0 = time.perf_counter()
            results = analyze_single_cells(chunk, [q.name for q in paths[start : start + batch]], config=config,
                                           **models)
            seconds += time.perf_counter() - t0
            for r in results:
                found.append(r.summary["found_by"] == "segmentation")
                p_f.append(float(r.cells["p_leukemic"].iloc[0]))
        p[f] = np.array(p_f)
        per_factor[f] = {"found_rate": float(np.mean(found)), "not_found": int(len(found) - sum(found)),
                         "accuracy": float(np.mean((p[f] >= 0.5) == truth)),
                         "seconds_per_image": seconds / len(paths)}
        if f != 1:
            d = np.abs(p[f] - p[1])
            per_factor[f].update(mean_abs_delta_p=float(d.mean()), p95_abs_delta_p=float(np.percentile(d, 95)),
                                 max_abs_delta_p=float(d.max()), over_0_05=int((d > 0.05).sum()),
                                 calls_flipped=int(((p[f] >= 0.5) != (p[1] >= 0.5)).sum()))
        print(f, per_factor[f], flush=True)
    return {str(f): v for f, v in per_factor.items()}


def speed(paths, models, gradcam: bool) -> dict:
    from napari_leukemia.core import drain
    from napari_leukemia.core.batch import analyze_images
    from napari_leukemia.core.config import AnalysisConfig

    config = AnalysisConfig(device="cpu", gradcam=gradcam, single_cell=True)
    drain(analyze_images(paths[:4], tempfile.mkdtemp(), config=config, **models))  # warm-up
    with tempfile.TemporaryDirectory() as out:
        load, t0, cpu0 = os.getloadavg()[0], time.perf_counter(), time.process_time()
        rows = drain(analyze_images(paths, out, config=config, **models))["rows"]
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert all(r["status"] == "ok" for r in rows)
    # the machine may be shared: the load before the run, and the CPU seconds this process used (all its threads)
    return {"images": len(paths), "seconds": seconds, "images_per_second": len(paths) / seconds,
            "cpu_seconds_per_image": cpu / len(paths), "load_average_before": load,
            "found_by_segmentation": sum(r["found_by"] == "segmentation" for r in rows)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="test fields (default 100)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (default 32)")
    parser.add_argument("--crop", type=float, default=1.0,
                        help="analyse the centred square of this fraction of each field's shorter side (0.5: the cell "
                             "fills most of the frame, as in other labs' single-cell sets; default 1, the whole field)")
    parser.add_argument("--speed", action="store_true", help="time analyze --single-cell instead")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, help="write the figures here (JSON)")
    args = parser.parse_args()
    import torch

    from napari_leukemia.core.model import load_classifier
    from napari_leukemia.core.segment import load_segmenter

    torch.set_num_threads(args.threads)
    models = {"classifier": load_classifier(None, "cpu"), "segmenter": load_segmenter(None, "cpu")}
    paths, truth = test_fields(args.n)
    report = {"fields": len(paths), "threads": args.threads, "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__}
    if args.speed:
        report["speed"] = {name: speed(paths, models, g) for name, g in (("no_gradcam", False), ("gradcam", True))}
    else:
        report["crop"] = args.crop
        report["factors"] = scales(paths, truth, models, args.batch, args.crop)
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
