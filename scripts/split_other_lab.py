"""Split another lab's cells into two halves, class by class: one to train on, one that no model ever sees.

Cross-validation adds the first half to every fold's training (``train --cv K --extra-train``) and scores the
second with every fold model (``--score-also``), so the call rate on another lab's cells stays honest while its
cells help training. Writes ``<name>_train.csv`` and ``<name>_heldout.csv`` (``path,label,group,stratum,detail``,
absolute paths) into ``--out``.

    python scripts/split_other_lab.py ../shared/data/pbc/manifest.csv --out ~/.cache/napari-leukemia/data
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from napari_leukemia.core.datasets import read_samples
from napari_leukemia.core.io import write_csv


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="a dataset napari-leukemia reads (e.g. ../shared/data/pbc/manifest.csv)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the two CSV files")
    parser.add_argument("--name", default="", help="file name prefix (default: the dataset's folder name)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    samples = read_samples(args.dataset)
    if len({s.group for s in samples}) != len(samples):
        raise SystemExit(f"{args.dataset}: images share groups; split it by group, not with this script")
    by_detail = defaultdict(list)
    for s in samples:
        by_detail[s.detail or s.label].append(s)
    rng = np.random.default_rng(args.seed)
    halves = {"train": [], "heldout": []}
    for _, group in sorted(by_detail.items()):
        order = rng.permutation(len(group))
        for rank, i in enumerate(order):
            halves["train" if rank < len(group) // 2 else "heldout"].append(group[i])
    name = args.name or Path(args.dataset).resolve().parent.name
    args.out.mkdir(parents=True, exist_ok=True)
    columns = ["path", "label", "group", "stratum", "detail"]
    for half, rows in halves.items():
        path = args.out / f"{name}_{half}.csv"
        write_csv(path, [{"path": str(Path(s.path).resolve()), "label": s.label, "group": s.group,
                          "stratum": s.stratum, "detail": s.detail} for s in rows], columns)
        print(f"{path}: {len(rows)} cells")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
