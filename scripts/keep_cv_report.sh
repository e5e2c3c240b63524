#!/usr/bin/env bash
# Copy a finished cross-validation's report, without its checkpoints, into the repository, so that its figures
# outlive the machine that ran it: scripts/keep_cv_report.sh RUN_DIR [DEST_ROOT]  (DEST_ROOT: docs/figures/cv)
#
# Kept: cv.json, patients.csv, patients.png, folds.json; predictions.csv gzipped (scripts/cv_table.py and
# scripts/cv_roc.py read the folder once it is gunzipped); per fold, fold_metrics.json, history.json, run.json and
# the other labs' calls (other_*.csv, gzipped). Classical baselines (scripts/classical_baselines.py) have no folds.
set -eu
src=${1:?usage: keep_cv_report.sh RUN_DIR [DEST_ROOT]}
src=${src%/}
root=${2:-$(dirname "$0")/../docs/figures/cv}
[ -f "$src/cv.json" ] || { echo "$src: no cv.json (is the cross-validation finished?)" >&2; exit 1; }
dst=$root/$(basename "$src")
rm -rf "$dst"
mkdir -p "$dst"
for f in cv.json patients.csv patients.png folds.json cell_type.json; do
  [ -f "$src/$f" ] && cp "$src/$f" "$dst/"
done
gzip -9 -n -c "$src/predictions.csv" > "$dst/predictions.csv.gz"
for fold in "$src"/fold_*; do
  [ -d "$fold" ] || continue
  d=$dst/$(basename "$fold")
  mkdir -p "$d"
  cp "$fold"/fold_metrics.json "$fold"/history.json "$fold"/run.json "$d/"
  for o in "$fold"/other_*.csv; do
    [ -f "$o" ] && gzip -9 -n -c "$o" > "$d/$(basename "$o").gz"
  done
done
du -sh "$dst"
