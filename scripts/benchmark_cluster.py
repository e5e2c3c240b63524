"""Inputs for the folder benchmarks of ``napari-leukemia analyze --workers N`` (issues 19 and 21).

Copies 100 BCCD smear fields (640 x 480) and 100 DeepAPL single-cell fields (360 x 363, ``split=test``, every
12th) from ``../shared/data`` into ``DIR/smears`` and ``DIR/cells`` and prints the commands to time, one process
against a LocalCluster of 2 single-threaded workers, e.g. each with ``/usr/bin/time -v`` (wall clock, peak memory),
alternating A B A B::

    python scripts/benchmark_cluster.py /tmp/bench
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--n", type=int, default=100, help="images of each kind (default 100)")
    args = parser.parse_args()
    smears, cells = args.dir / "smears", args.dir / "cells"
    for folder in (smears, cells):
        folder.mkdir(parents=True, exist_ok=True)
    for path in sorted((SHARED / "bccd" / "JPEGImages").glob("*.jpg"))[: args.n]:
        shutil.copy(path, smears / path.name)
    with open(SHARED / "deepapl" / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"][::12][: args.n]
    for r in rows:
        shutil.copy(SHARED / "deepapl" / r["file"], cells / Path(r["file"]).name)
    common = "--no-gradcam --device cpu --overwrite --quiet"
    for name, extra in (("smears", ""), ("cells", " --single-cell")):
        folder = args.dir / name
        print(f"one process: napari-leukemia analyze {folder} --out {args.dir}/out_{name}_1{extra} {common}")
        print(f"2 workers:   napari-leukemia analyze {folder} --out {args.dir}/out_{name}_2{extra} {common} --workers 2")


if __name__ == "__main__":
    main()
