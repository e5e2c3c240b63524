"""Give a classifier checkpoint a feature SVM fitted on the hand-made features of a dataset's cells, outside a
training run (``train --feature-svm`` fits one on the training split of the run it makes).

    python scripts/attach_feature_svm.py src/napari_leukemia/models/densenet201_leukemia.safetensors \
        --features ~/.cache/napari-leukemia/runs/cv5_classical_z8w/features_cv.npz \
        --dataset ../shared/data/deepapl/manifest.csv --out ~/.cache/napari-leukemia/models/shipped_svm94.safetensors

``--features`` is the ``features_<name>.npz`` of ``scripts/classical_baselines.py`` (paths, feature names, one row per
cropped cell); each path's label comes from ``--dataset`` (DeepAPL: the WHO blast-equivalent target). The checkpoint
is written anew (``--out``, never over an existing file) with the SVM and a provenance note; its network is untouched.
Use it to look at the pair on other labs' cells; a checkpoint is shipped only after cross-validation of the pair.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from napari_leukemia.core.classical import FEATURE_NAMES, fit_feature_svm
from napari_leukemia.core.datasets import read_samples
from napari_leukemia.core.model import load_classifier, save_classifier


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--features", required=True, type=Path)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; choose another --out")
    clf = load_classifier(args.checkpoint, "cpu")
    with np.load(args.features, allow_pickle=False) as z:
        if tuple(z["names"]) != FEATURE_NAMES:
            raise SystemExit(f"{args.features}: other features than this version computes; compute them again")
        paths, features = [str(p) for p in z["paths"]], z["features"]
    label = {str(s.path): s.label for s in read_samples(args.dataset)}
    missing = [p for p in paths if p not in label]
    if missing:
        raise SystemExit(f"{args.features}: {len(missing)} cells are not in {args.dataset} (first: {missing[0]})")
    is_leukemic = np.array([label[p] in clf.info.leukemic for p in paths])
    start = time.perf_counter()
    clf.feature_svm = fit_feature_svm(features, is_leukemic, margin=clf.info.crop.margin, seed=args.seed)
    seconds = time.perf_counter() - start
    clf.info.provenance["feature_svm"] = {"fit_on": f"{len(paths)} cells of {args.dataset}", "features": str(args.features),
                                          "support_vectors": len(clf.feature_svm.support_vectors),
                                          "seconds": round(seconds, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_classifier(clf, args.out)
    print(f"wrote {args.out}: {len(paths)} cells ({int(is_leukemic.sum())} leukaemic), "
          f"{len(clf.feature_svm.support_vectors)} support vectors, {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
