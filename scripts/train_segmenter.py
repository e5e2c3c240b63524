"""Train the leukocyte cellpose 3 model from scratch on masks made by make_segmenter_masks.py.

    python scripts/train_segmenter.py --data .segdata --out leukocyte_cellpose.safetensors --epochs 50

Runs on CUDA when present. Images are fed as napari-leukemia's two cellpose channels (cell density,
nuclear stain); cellpose rescales every image so its leukocytes are ``--diam-mean`` pixels wide.
"""

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from napari_leukemia.core.segment import cellpose_input, resolve_device, save_segmenter


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".segdata")
    ap.add_argument("--out", default="leukocyte_cellpose.safetensors")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--images-per-epoch", type=int, default=640)
    ap.add_argument("--diam-mean", type=float, default=30.0)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--bsize", type=int, default=224, help="training patch size (112 trains 4x faster on a CPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--convert", help="only convert a cellpose training snapshot (e.g. after a time-out) to --out")
    args = ap.parse_args()
    if args.convert:
        return convert(args)
    from cellpose import models, train

    torch.manual_seed(0)
    np.random.seed(0)
    data = Path(args.data)
    rows = list(csv.DictReader(open(data / "list.csv")))
    images = [cellpose_input(np.asarray(Image.open(data / r["image"]).convert("RGB"))) for r in rows]
    masks = [np.asarray(Image.open(data / r["masks"])).astype(np.int32) for r in rows]
    dev = resolve_device(args.device)
    model = models.CellposeModel(pretrained_model=False, diam_mean=args.diam_mean, device=dev, gpu=dev.type == "cuda")
    run_dir = Path(args.out).resolve().parent / "cellpose_run"
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    _, train_losses, _ = train.train_seg(
        model.net,
        train_data=images,
        train_labels=masks,
        channel_axis=-1,
        normalize=True,
        n_epochs=args.epochs,
        nimg_per_epoch=args.images_per_epoch,
        learning_rate=args.lr,
        min_train_masks=1,
        save_path=str(run_dir),
        model_name="leukocyte",
        save_every=5,
        bsize=args.bsize,
    )
    seconds = time.time() - t0
    provenance = {
        "trained_on": f"{len(rows)} fields with stain-derived masks (scripts/make_segmenter_masks.py)",
        "command": "python scripts/train_segmenter.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "epochs": args.epochs,
        "seconds": round(seconds, 1),
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor(),
        "final_loss": float(train_losses[-1]),
    }
    save_segmenter(model.net, args.out, provenance=provenance)
    print(json.dumps(provenance, indent=1))
    print("losses", np.round(train_losses[:: max(1, args.epochs // 10)], 4).tolist())


def convert(args):
    """Save a cellpose snapshot (its own torch state dict, loaded with weights_only=True) as our safetensors."""
    from cellpose import models

    model = models.CellposeModel(pretrained_model=False, diam_mean=args.diam_mean, device=torch.device("cpu"))
    model.net.load_state_dict(torch.load(args.convert, map_location="cpu", weights_only=True))
    save_segmenter(model.net, args.out, provenance={"converted_from_snapshot": Path(args.convert).name,
                                                   "command": "python scripts/train_segmenter.py (timed out; last snapshot)"})


if __name__ == "__main__":
    main()
