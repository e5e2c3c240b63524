"""What each classifier architecture costs on this machine: parameters, inference and training crops per second.

    OMP_NUM_THREADS=1 python scripts/arch_costs.py --threads 1 --out docs/figures/arch_costs.json

Every architecture of ``train --arch`` at the crop size of the comparison (112 px), on real crops (the cells of the
bundled BCCD field, repeated):
- inference: the product's path (:func:`~napari_leukemia.core.predict.predict_logits`, channels_last and bf16 where
  the CPU has it), crops per second;
- training: the training loop's own step (:func:`~napari_leukemia.core.train.train_one_epoch`: augmentation,
  forward, backward, Adam), crops per second, batch 32.
The architectures are timed in turn, round after round, and each is also given as a ratio to DenseNet201 timed in
the same round (the median over rounds), so a machine busy with other work changes the ratios less than the speeds.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from napari_leukemia.core.config import CLASSIFIER_ARCHITECTURES, CropConfig, TrainConfig
from napari_leukemia.core.device import flush_denormals
from napari_leukemia.core.model import ClassifierInfo, new_classifier
from napari_leukemia.core.predict import predict_logits
from napari_leukemia.core.preprocess import crop_cells
from napari_leukemia.core.stain import stain_segment
from napari_leukemia.core.train import CropSet, train_one_epoch
from napari_leukemia.samples import load_sample

REFERENCE = "densenet201"


def sample_crops(size: int, n: int) -> np.ndarray:
    """``n`` real crops of ``size`` px: the bundled BCCD field's cells, repeated."""
    image = load_sample("bccd")
    crops = crop_cells(image, stain_segment(image), CropConfig(size=size)).images
    return np.repeat(crops, int(np.ceil(n / len(crops))), axis=0)[:n]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--cells", type=int, default=64, help="crops per inference timing (default 64)")
    ap.add_argument("--train-steps", type=int, default=2, help="training steps of 32 crops per timing (default 2)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--archs", nargs="+", default=list(CLASSIFIER_ARCHITECTURES))
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    flush_denormals(torch.device("cpu"))
    archs = [REFERENCE] + [a for a in args.archs if a != REFERENCE]
    crops = sample_crops(args.size, max(args.cells, 32 * args.train_steps))
    cfg = TrainConfig(lowres_p=0.5)  # the comparison's augmentation
    train_set = CropSet(crops, np.arange(len(crops)) % 2, np.zeros(len(crops)).astype(str))
    batches = [np.arange(i * 32, (i + 1) * 32) for i in range(args.train_steps)]
    models, params = {}, {}
    for arch in archs:
        clf = new_classifier(ClassifierInfo(crop=CropConfig(size=args.size), architecture=arch))
        models[arch] = clf
        params[arch] = sum(p.numel() for p in clf.net.parameters())

    def infer(arch):
        return timed(lambda: predict_logits(models[arch], crops[: args.cells], fast=True))

    def train(arch):
        clf = models[arch]
        net = clf.net.train().to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        weights = torch.ones(2)
        return timed(lambda: train_one_epoch(net, train_set, batches, clf.info, cfg, opt, scaler, weights, epoch=0,
                                             out=".", should_stop=lambda: False))

    for arch in archs:  # warm-up: first calls allocate and pick kernels
        infer(arch), train(arch)
    seconds = {a: {"infer": [], "train": []} for a in archs}
    for _ in range(args.rounds):
        for arch in archs:
            seconds[arch]["infer"].append(infer(arch))
            seconds[arch]["train"].append(train(arch))
    n_train = 32 * args.train_steps
    report = {
        "machine": f"{platform.machine()}, {args.threads} thread(s), torch {torch.__version__}",
        "size_px": args.size,
        "rounds": args.rounds,
        "architectures": {},
    }
    ref = seconds[REFERENCE]
    for arch in archs:
        s = seconds[arch]
        report["architectures"][arch] = {
            "parameters": params[arch],
            "infer_crops_per_s": round(args.cells / statistics.median(s["infer"]), 1),
            "train_crops_per_s": round(n_train / statistics.median(s["train"]), 1),
            f"infer_speed_over_{REFERENCE}": round(statistics.median(r / t for r, t in zip(ref["infer"], s["infer"])), 2),
            f"train_speed_over_{REFERENCE}": round(statistics.median(r / t for r, t in zip(ref["train"], s["train"])), 2),
        }
    print(json.dumps(report, indent=1))
    print(f"\n| architecture | parameters | inference crops/s | x {REFERENCE} | training crops/s | x {REFERENCE} |")
    print("|---|---|---|---|---|---|")
    for arch, r in report["architectures"].items():
        print(f"| {arch} | {r['parameters'] / 1e6:.1f} M | {r['infer_crops_per_s']:.0f} | "
              f"{r[f'infer_speed_over_{REFERENCE}']:.2f} | {r['train_crops_per_s']:.1f} | "
              f"{r[f'train_speed_over_{REFERENCE}']:.2f} |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
