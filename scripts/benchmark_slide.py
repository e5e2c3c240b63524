"""Whole-slide analysis: peak memory and speed against slide size (issue 19).

    OMP_NUM_THREADS=1 python scripts/benchmark_slide.py --sizes 10000 --out docs/figures/benchmark_slide.json
    python scripts/benchmark_slide.py --sizes 10000 20000 40000 --work /scratch/slides
    python scripts/benchmark_slide.py --sizes 20000 40000 --smear-mp 100 --out docs/figures/benchmark_slide_smear.json

For each size, builds a pyramidal OME-TIFF mosaic of real BCCD fields (scripts/make_slide.py; ``--blank`` of the
grid left as empty glass, as on a real smear; with ``--smear-mp``, the smear covers only that many megapixels at the
left of the slide and the rest is glass, as around the smear of a scanned slide), then analyses it blockwise
(``core.slide_analysis``, the shipped segmenter and classifier, default tile size) in a child process, one per
slide, so that each peak resident memory (``os.wait4``'s rusage of that child: imports, models and the analysis
together) is the slide's own. Reported per
slide: megapixels, tiles (and background tiles skipped), leukocytes, seconds (the analysis; the child's wall time
too), megapixels per second and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(slide: str, out: str, tile: int, device: str) -> None:
    """Analyse ``slide`` into ``out``; print the summary as JSON on the last line."""
    from napari_leukemia.core.config import AnalysisConfig, SegmentConfig
    from napari_leukemia.core.slide_analysis import analyze_slide

    config = AnalysisConfig(device=device, gradcam=False, segment=SegmentConfig(tile_size=tile))
    summary = analyze_slide(slide, out, config=config, overwrite=True)
    print(json.dumps({k: summary[k] for k in ("leukocytes", "leukemic", "tiles", "tiles_skipped", "timings",
                                                "megapixels_per_s", "diameter")}))


def measure(slide: Path, out: Path, tile: int, device: str) -> dict:
    """Run :func:`child` in a new process; its summary, wall time and peak RSS (GB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(slide), str(out), "--tile", str(tile),
                             "--device", device], stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"the analysis of {slide} failed (exit {proc.returncode})")
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {**summary, "wall_s": round(time.perf_counter() - t0, 1), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 40_000], help="slide sides in pixels")
    ap.add_argument("--blank", type=float, default=0.5, help="fraction of the mosaic left as empty glass")
    ap.add_argument("--smear-mp", type=float, default=None,
                    help="megapixels of the slide holding the smear (the rest empty glass; default: all of it)")
    ap.add_argument("--tile", type=int, default=2048, help="analysis tile size (the default setting)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", type=Path, default=HERE.parents[1] / "shared" / "data")
    ap.add_argument("--work", type=Path, default=None, help="folder for the slides and results (default: a temp one)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    ap.add_argument("--child", nargs=2, metavar=("SLIDE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(*args.child, args.tile, args.device)
    sys.path.insert(0, str(HERE))
    from make_slide import make_slide

    work = args.work or Path(tempfile.mkdtemp(prefix="benchmark_slide_"))
    rows = []
    for side in args.sizes:
        smear = 1.0 if args.smear_mp is None else min(1.0, args.smear_mp * 1e6 / side**2)
        slide = work / (f"slide_{side}.ome.tif" if smear == 1.0 else f"slide_{side}_smear{smear:.4f}.ome.tif")
        if not slide.exists():
            t0 = time.perf_counter()
            make_slide(slide, side, data=args.data, blank=args.blank, smear=smear, seed=side)
            print(f"built {slide} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        row = {"side": side, "megapixels": side * side / 1e6, "smear": smear, **measure(slide, work / f"result_{side}", args.tile,
                                                                          args.device)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"blank": args.blank, "tile": args.tile, "device": args.device, "threads": os.environ.get("OMP_NUM_THREADS"),
              "cpus": os.cpu_count(), "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
