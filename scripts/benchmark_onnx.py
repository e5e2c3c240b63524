"""ONNX Runtime against the torch CPU paths: crops per second and agreement, measured in the same run.

    python scripts/benchmark_onnx.py --threads 1 2 --out docs/figures/benchmark_onnx.json

On the shipped classifier (DenseNet201 at 112 px) and real crops (every cell the stain segmenter finds on the bundled
samples, repeated to the batch size), for each thread count, rounds that run every path once in turn on one batch
(after a warm-up round), so that a machine whose speed drifts slows every path alike:

- ``torch_fp32``: ``predict_logits(fast=False)``;
- ``torch_fast``: ``predict_logits(fast=True)``, channels_last + bf16 autocast on CPUs with native bf16 (this one);
- ``torch_fast_no_bf16``: the same fast path as it runs on a CPU without bf16 (channels_last, fp32);
- ``onnx``: ``predict_logits`` of the classifier converted by ``onnx_backend`` (as ``as_onnx`` does), ONNX
  Runtime fp32.

Reports each path's median crops/s, the median over rounds of each torch path's time over ONNX Runtime's (above 1:
ONNX Runtime is faster), the same in the process's CPU seconds (the figure to read when another process holds the
cores: wall-clock time then measures the contention), the largest |p_leukemic - torch fp32's| of each path, and the
machine's load average before and after.
"""

import argparse
import json
import os
import platform
import statistics
import time
from unittest import mock

import numpy as np
import torch

from napari_leukemia.core import device as device_module
from napari_leukemia.core.device import hardware
from napari_leukemia.core.model import load_classifier
from napari_leukemia.core.onnx_backend import cached_onnx_path, load_onnx_classifier
from napari_leukemia.core.predict import p_leukemic, predict_logits, probabilities
from napari_leukemia.core.preprocess import crop_cells
from napari_leukemia.core.stain import stain_segment
from napari_leukemia.samples import load_sample, mosaic_sample


def real_crops(clf, n: int) -> np.ndarray:
    images = [load_sample("deepapl"), load_sample("bccd"), mosaic_sample()[0]]
    crops = np.concatenate([crop_cells(im, stain_segment(im), clf.info.crop).images for im in images])
    return np.ascontiguousarray(np.resize(crops, (n,) + crops.shape[1:]))


def paths(clf, onnx_clf):
    def no_bf16(crops):
        with mock.patch.object(device_module, "cpu_has_bf16", lambda: False):
            return predict_logits(clf, crops, fast=True)

    return {
        "torch_fp32": lambda crops: predict_logits(clf, crops, fast=False),
        "torch_fast": lambda crops: predict_logits(clf, crops, fast=True),
        "torch_fast_no_bf16": no_bf16,
        "onnx": lambda crops: predict_logits(onnx_clf, crops),
    }


def measure(clf, onnx_path, crops, threads: int, rounds: int) -> dict:
    torch.set_num_threads(threads)
    onnx_clf = load_onnx_classifier(onnx_path, threads=threads)
    runs = paths(clf, onnx_clf)
    reference = p_leukemic(clf, probabilities(clf, runs["torch_fp32"](crops)))
    seconds = {name: [] for name in runs}
    cpu_seconds = {name: [] for name in runs}
    max_dp = {}
    for r in range(rounds + 1):  # round 0 warms up
        for name, run in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            logits = run(crops)
            if r:
                seconds[name].append(time.perf_counter() - t0)
                cpu_seconds[name].append(time.process_time() - c0)
            else:
                max_dp[name] = float(np.abs(p_leukemic(clf, probabilities(clf, logits)) - reference).max())
    def rate(times):
        return {k: round(len(crops) / statistics.median(v), 1) for k, v in times.items()}

    def speedup(times):
        return {k: round(statistics.median(a / b for a, b in zip(v, times["onnx"])), 2)
                for k, v in times.items() if k != "onnx"}

    return {
        "threads": threads,
        "crops_per_s": rate(seconds),
        "onnx_speedup_over": speedup(seconds),
        "crops_per_cpu_s": rate(cpu_seconds),
        "onnx_speedup_over_in_cpu_time": speedup(cpu_seconds),
        "max_abs_dp_leukemic_vs_torch_fp32": {k: float(f"{v:.2g}") for k, v in max_dp.items() if k != "torch_fp32"},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classifier", default="leukemic", help="checkpoint or shipped name (default leukemic)")
    ap.add_argument("--batch", type=int, default=32, help="crops per batch, one batch per path and round")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None, help="also write the report here (JSON)")
    args = ap.parse_args()
    clf = load_classifier(args.classifier, "cpu")
    crops = real_crops(clf, args.batch)
    onnx_path = cached_onnx_path(clf)  # converted once, kept under ~/.cache/napari-leukemia/onnx
    load_before = os.getloadavg()
    results = [measure(clf, onnx_path, crops, t, args.rounds) for t in args.threads]
    import onnxruntime

    report = {
        "machine": f"{hardware(torch.device('cpu'))}, {platform.machine()}",
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "classifier": f"{clf.name} ({clf.info.architecture}, {clf.info.crop.size} px)",
        "batch": args.batch, "rounds": args.rounds,
        "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "results": results,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
