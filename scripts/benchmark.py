"""Speed of each stage on this machine, as ratios against references measured in the same run.

    python scripts/benchmark.py --out docs/figures/benchmark.json

- segmentation: seconds per megapixel, shipped cellpose vs the stain baseline, on the bundled BCCD field;
- classification: crops per second, fp32 reference vs the fast path (channels_last + bf16 on CPU, fp16 on CUDA);
- Grad-CAM: seconds per cell; and the whole analyze_smear on the bundled sample;
- training: seconds per step (batch 32, every weight of the shipped DenseNet201), denormal floats computed
  vs flushed to zero (what training and Grad-CAM do on a CPU).
"""

import argparse
import copy
import json
import platform
import time

import numpy as np
import torch

from napari_leukemia.core.config import AnalysisConfig, SegmentConfig
from napari_leukemia.core.explain import gradcam
from napari_leukemia.core.model import load_classifier
from napari_leukemia.core.pipeline import analyze_smear
from napari_leukemia.core.predict import predict_logits
from napari_leukemia.core.preprocess import crop_cells, to_tensor
from napari_leukemia.core.segment import load_segmenter, segment_leukocytes
from napari_leukemia.samples import load_sample


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def train_step_seconds(clf, crops, flush: bool) -> float:
    """One Adam step of every weight on a batch of crops (learning rate 0: the weights stay as they are)."""
    net = copy.deepcopy(clf.net).train().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=0.0)
    x = to_tensor(crops, clf.info.crop).contiguous(memory_format=torch.channels_last)
    y = torch.zeros(len(x), dtype=torch.long)
    torch.set_flush_denormal(flush)  # in this thread (run with OMP_NUM_THREADS=1: the intra-op threads keep theirs)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    step()
    return best_of(step, 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cells", type=int, default=64)
    ap.add_argument("--train-checkpoint", default=None,
                    help="the weights the training step starts from (default: the shipped classifier; a checkpoint "
                         "saved in fp32 by a training run meets more denormals)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    image = load_sample("bccd")
    mp = image.shape[0] * image.shape[1] / 1e6
    model = load_segmenter(None, args.device)
    clf = load_classifier(None, args.device)
    segment_leukocytes(image, SegmentConfig(), model=model)  # warm-up
    seg = {m: best_of(lambda m=m: segment_leukocytes(image, SegmentConfig(method=m), model=model)) / mp
           for m in ("cellpose", "stain")}
    labels = segment_leukocytes(image, SegmentConfig(), model=model)
    crops = crop_cells(image, labels, clf.info.crop).images
    crops = np.repeat(crops, int(np.ceil(args.cells / len(crops))), axis=0)[: args.cells]
    predict_logits(clf, crops[:8], fast=True)
    slow = best_of(lambda: predict_logits(clf, crops, fast=False), 2)
    fast = best_of(lambda: predict_logits(clf, crops, fast=True), 2)
    cam = best_of(lambda: gradcam(clf, crops[:8], [0] * 8), 1) / 8
    start = load_classifier(args.train_checkpoint, args.device) if args.train_checkpoint else clf
    step_kept = train_step_seconds(start, crops[:32], flush=False)
    step_flushed = train_step_seconds(start, crops[:32], flush=True)
    whole = best_of(lambda: analyze_smear(image, config=AnalysisConfig(device=args.device)), 2)
    report = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "device": args.device,
        "classifier_input_px": clf.info.crop.size,
        "segment_s_per_megapixel": {k: round(v, 3) for k, v in seg.items()},
        "stain_over_cellpose_time": round(seg["stain"] / seg["cellpose"], 2),
        "classify_cells_per_s_fp32": round(len(crops) / slow, 1),
        "classify_cells_per_s_fast": round(len(crops) / fast, 1),
        "fast_path_speedup": round(slow / fast, 2),
        "gradcam_s_per_cell": round(cam, 3),
        "analyze_bccd_sample_s": round(whole, 2),
        "train_step_from": start.name,
        "train_step_s_denormals_kept": round(step_kept, 2),
        "train_step_s_denormals_flushed": round(step_flushed, 2),
        "flush_denormals_speedup": round(step_kept / step_flushed, 2),
    }
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
