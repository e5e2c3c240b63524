#!/usr/bin/env bash
# The equal-budget comparison of the classifier architectures (docs/benchmark.md, issue 20): every architecture
# trains for the same CPU time per fold, on the same 5 patient folds of DeepAPL's 94 patients and the same crops,
# and its fold models score PBC's held-out normal cells. Rerun to resume: a finished run (cv.json) is skipped, a
# cross-validation resumes fold by fold.
#   bash scripts/budget_comparison.sh MINUTES RUNS_DIR CROPS_CACHE PBC_HELDOUT_CSV [ARCH ...]
# PBC_HELDOUT_CSV comes from `python scripts/split_other_lab.py ../shared/data/pbc/manifest.csv --out DIR`. Then
#   python scripts/cv_table.py RUNS_DIR/cv5_budgetMINUTES_* --costs docs/figures/arch_costs.json
set -euo pipefail
[ $# -ge 4 ] || { sed -n 2,8p "$0"; exit 2; }
minutes=$1 runs=$2 cache=$3 pbc=$4
shift 4
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(densenet201 small_cnn efficientnet_b0 resnet50 cnn_transformer vgg16 resnet18)
cd "$(dirname "$0")/.."
for arch in "${archs[@]}"; do
  out=$runs/cv5_budget${minutes}_$arch
  [ -f "$out/cv.json" ] && continue
  echo "$(date +%T) $arch"
  napari-leukemia train ../shared/data/deepapl/manifest.csv --cv 5 --size 112 --imagenet none --epochs 50 \
    --patience 4 --cpu-minutes "$minutes" --lowres-p 0.5 --seed 0 --device cpu --score-also "$pbc" \
    --crops-cache "$cache" --arch "$arch" --out "$out" --quiet
done
