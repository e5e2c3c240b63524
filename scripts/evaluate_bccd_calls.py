"""How often leukocytes of normal smears (BCCD: another lab, scanner and stain) are called leukaemic.

    python scripts/evaluate_bccd_calls.py --out docs/figures/bccd_calls.json
"""

import argparse
import json
from pathlib import Path

import numpy as np

from napari_leukemia.core.config import AnalysisConfig
from napari_leukemia.core.io import read_image
from napari_leukemia.core.pipeline import analyze_smear


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--classifier", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    files = sorted((Path(args.shared) / "bccd" / "JPEGImages").glob("*.jpg"))
    p, per_field = [], []
    for f in files:
        r = analyze_smear(read_image(f), classifier=args.classifier, name=f.name,
                          config=AnalysisConfig(device="cpu", gradcam=False))
        p.extend(r.cells["p_leukemic"].tolist())
        per_field.append({"image": f.name, "leukocytes": r.summary["leukocytes"], "leukemic": r.summary["leukemic"]})
    p = np.asarray(p)
    report = {"fields": len(files), "leukocytes": int(len(p)), "called_leukemic": int((p >= 0.5).sum()),
              "fraction_called_leukemic": float((p >= 0.5).mean()) if len(p) else 0.0,
              "median_p_leukemic": float(np.median(p)) if len(p) else 0.0, "per_field": per_field}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print({k: v for k, v in report.items() if k != "per_field"})


if __name__ == "__main__":
    main()
