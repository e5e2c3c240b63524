"""Train the leukocyte cellpose 3 model from scratch on masks made by make_segmenter_masks.py.

    python scripts/train_segmenter.py --data .segdata --out leukocyte_cellpose.safetensors --epochs 50
    python scripts/train_segmenter.py --data .segdata --lists list.csv zheng1.csv*4 ...   (zheng1's images 4x as often)

Runs on CUDA when present. Images are fed as napari-leukemia's two cellpose channels (cell density,
nuclear stain); cellpose rescales every image so its leukocytes are ``--diam-mean`` pixels wide.
"""

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from napari_leukemia.core.device import resolve_device
from napari_leukemia.core.segment import cellpose_input, new_cellpose, save_segmenter


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".segdata")
    ap.add_argument("--lists", nargs="+", default=["list.csv"], metavar="CSV[*N]",
                    help="lists of image and mask files in --data; CSV*N repeats that list's images N times")
    ap.add_argument("--out", default="leukocyte_cellpose.safetensors")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--images-per-epoch", type=int, default=640)
    ap.add_argument("--diam-mean", type=float, default=20.0)
    ap.add_argument("--nbase", default="16,32,64,128", help="U-Net widths (cellpose's own: 32,64,128,256)")
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--bsize", type=int, default=224, help="training patch size (112 trains 4x faster on a CPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--convert", help="only convert a cellpose training snapshot (e.g. after a time-out) to --out")
    args = ap.parse_args()
    if args.convert:
        return convert(args)
    from cellpose import train

    torch.manual_seed(0)
    np.random.seed(0)
    data = Path(args.data)
    rows = []
    for spec in args.lists:
        name, _, repeat = spec.partition("*")
        rows += list(csv.DictReader(open(data / name))) * int(repeat or 1)
    images, masks = [], []
    for r in rows:  # pre-scale so leukocytes are diam_mean wide: flows and patches stay small
        image = cellpose_input(np.asarray(Image.open(data / r["image"]).convert("RGB")))
        mask = np.asarray(Image.open(data / r["masks"])).astype(np.int32)
        areas = np.bincount(mask.ravel())[1:]
        scale = args.diam_mean / (2 * np.sqrt(np.median(areas[areas > 0]) / np.pi))
        size = (max(16, round(mask.shape[1] * scale)), max(16, round(mask.shape[0] * scale)))
        images.append(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
        masks.append(cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_NEAREST).astype(np.int32))
    dev = resolve_device(args.device)
    model = new_cellpose(args.diam_mean, [2] + [int(n) for n in args.nbase.split(",")], dev)
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
        "trained_on": f"{len(rows)} images ({', '.join(args.lists)}) with masks from scripts/make_segmenter_masks.py",
        "command": "python scripts/train_segmenter.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items()),
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
    model = new_cellpose(args.diam_mean, [2] + [int(n) for n in args.nbase.split(",")], torch.device("cpu"))
    model.net.load_state_dict(torch.load(args.convert, map_location="cpu", weights_only=True))
    save_segmenter(model.net, args.out, provenance={"converted_from_snapshot": Path(args.convert).name,
                                                   "command": "python scripts/train_segmenter.py (timed out; last snapshot)"})


if __name__ == "__main__":
    main()
