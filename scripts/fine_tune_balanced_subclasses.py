"""Fine-tune the leukaemic-vs-normal classifier with rare DeepAPL cell classes repeated in its training set.

    python scripts/fine_tune_balanced_subclasses.py --out runs/hard_sqrt_s0_300 --repeat sqrt --steps 300
    python scripts/fine_tune_balanced_subclasses.py --out runs/hard_none_s0_300 --repeat none --steps 300

The shipped recipe (``--lowres-p 0.5``, lr 1e-4, from the first-stage weights, the seed's binary split) with each
training cell repeated by its pathologist cell class: ``none`` (the recipe itself), ``igK`` (myelocytes and
metamyelocytes K times: the normal cells most often called leukaemic) or ``sqrt`` (``round(sqrt(n_max / n))``
times, n = that class's training cells). Writes a calibrated ``classifier.safetensors`` to ``--out``.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from napari_leukemia.core import drain
from napari_leukemia.core.config import TrainConfig
from napari_leukemia.core.cropstore import iter_crops
from napari_leukemia.core.datasets import IMMATURE_GRANULOCYTES, read_samples, split_by_group
from napari_leukemia.core.fit import finalize_run
from napari_leukemia.core.model import load_classifier
from napari_leukemia.core.train import train_epochs

MANIFEST = Path("../shared/data/deepapl/manifest.csv")


def repeats(labels: np.ndarray, rule: str) -> np.ndarray:
    """How many times each training cell is put in the training set."""
    if rule.startswith("ig"):
        return np.where(np.isin(labels, IMMATURE_GRANULOCYTES), int(rule[2:]), 1)
    if rule == "sqrt":
        names, counts = np.unique(labels, return_counts=True)
        n = dict(zip(names, counts))
        return np.array([round(np.sqrt(counts.max() / n[x])) for x in labels])
    if rule == "none":
        return np.ones(len(labels), int)
    raise ValueError(f"--repeat must be none, sqrt or igK, got {rule!r}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeat", default="sqrt")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", default="runs/first_stage/densenet201_leukemia_a399a5734a5d.safetensors",
                    help="the first-stage weights: git show 84f3174:src/napari_leukemia/models/densenet201_leukemia.safetensors")
    ap.add_argument("--cache", default=".clsdata/deepapl_112_seg2.npz")
    args = ap.parse_args(argv)
    init = load_classifier(args.init, "cpu")
    samples = read_samples(MANIFEST, "binary")
    fine = {str(s.path): s.label for s in read_samples(MANIFEST, "cell_class")}
    splits = split_by_group(samples, seed=args.seed)
    crops = drain(iter_crops(splits["train"] + splits["val"], init.info.crop, cache=args.cache, device="cpu"))
    in_val = {id(s) for s in splits["val"]}
    is_val = np.array([id(s) in in_val for s in crops.samples])
    labels = np.array([fine[str(s.path)] for s in crops.samples])[~is_val]
    data = crops.cropset(init.info.classes)
    val = data.subset(is_val)
    train = data.subset(np.repeat(np.flatnonzero(~is_val), repeats(labels, args.repeat)))
    cfg = TrainConfig(epochs=1, max_steps_per_epoch=args.steps, lr=1e-4, seed=args.seed, device="cpu", lowres_p=0.5,
                      imagenet="")
    t0 = time.time()
    for report in train_epochs(train, val, init.info, cfg, args.out, init=init):
        print(report, flush=True)
    print(finalize_run(Path(args.out), val, cfg, {"command": "scripts/fine_tune_balanced_subclasses.py " +
                                                  " ".join(sys.argv[1:] if argv is None else argv)}), f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
