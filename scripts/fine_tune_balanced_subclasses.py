"""Fine-tune the leukaemic-vs-normal classifier with rare DeepAPL cell classes drawn more often.

    python scripts/fine_tune_balanced_subclasses.py --out runs/hard_sqrt_s0_300 --repeat sqrt --steps 300
    python scripts/fine_tune_balanced_subclasses.py --out runs/hard_none_s0_300 --repeat none --steps 300

The shipped recipe (``--lowres-p 0.5``, lr 1e-4, from the first-stage weights, the seed's binary split), one epoch of
``--steps`` steps, through the same training run as ``napari-leukemia train`` (:func:`~.fit.fit_classifier`):
``--repeat none`` is the recipe itself (``--sampling cells``); ``--repeat sqrt`` draws each training cell with a
chance proportional to ``1 / sqrt(n)``, n the training cells of its pathologist cell class (``--sampling
cell_class``), so that each class's share of the draws goes as ``sqrt(n)``. The same as::

    napari-leukemia train ../shared/data/deepapl/manifest.csv --out DIR --init INIT --sampling cell_class \\
        --epochs 1 --steps-per-epoch 300 --lr 1e-4 --lowres-p 0.5 --imagenet none --device cpu --crops-cache CACHE

Writes a calibrated ``classifier.safetensors`` (and the run's other files) to ``--out``.

History: the runs of 2026-11-24 (docs/training_log.md, session 7) repeated each cell ``round(sqrt(n_max / n))``
times in a training set built by hand; the draws give the same shares of the classes without the rounding, so
their figures are close to, not equal to, what this script gives now. The ``igK`` rule (myelocytes and
metamyelocytes K times) is dropped: no sampling choice expresses it. Its runs came from the earlier script:
``git show 676aa61:scripts/fine_tune_balanced_subclasses.py``.
"""

import argparse
import sys

from napari_leukemia.core import drain
from napari_leukemia.core.config import TrainConfig
from napari_leukemia.core.fit import fit_classifier

MANIFEST = "../shared/data/deepapl/manifest.csv"
#: ``--repeat`` as the training option that replaced it.
SAMPLING = {"sqrt": "cell_class", "none": "cells"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeat", default="sqrt", choices=tuple(SAMPLING),
                    help="sqrt: draw by cell class (--sampling cell_class); none: every cell once")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", default="runs/first_stage/densenet201_leukemia_a399a5734a5d.safetensors",
                    help="the first-stage weights: git show 84f3174:src/napari_leukemia/models/densenet201_leukemia.safetensors")
    ap.add_argument("--cache", default=".clsdata/deepapl_112_seg2.npz")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    args = ap.parse_args(argv)
    cfg = TrainConfig(epochs=1, max_steps_per_epoch=args.steps, lr=1e-4, seed=args.seed, device="cpu", lowres_p=0.5,
                      imagenet="", sampling=SAMPLING[args.repeat])
    command = "scripts/fine_tune_balanced_subclasses.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = drain(fit_classifier(MANIFEST, args.out, config=cfg, init=args.init, crops_cache=args.cache,
                                  overwrite=args.overwrite, command=command),
                   lambda e: print(e.payload, flush=True) if e.stage == "epoch" else None)
    print({k: result.get(k) for k in ("checkpoint", "val_metrics", "temperature")})


if __name__ == "__main__":
    main()
