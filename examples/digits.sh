#!/usr/bin/env bash
# The digits pipeline, stage by stage, as a shell script would chain it.
set -euo pipefail
DATA=${1:-examples/digits}

labelkit embed "$DATA"                      # pixels:8 for these 8x8 images (auto)
labelkit prototype "$DATA" --n-per-class 2
labelkit pseudolabel "$DATA" --threshold-rule flexmatch --threshold 0.95
labelkit detect-noise "$DATA" --export-review "$DATA/.labelkit/review.csv"
labelkit distill "$DATA" --student mlp
labelkit predict "$DATA/.labelkit/student" "$DATA" --out "$DATA/.labelkit/predict"
labelkit report "$DATA"
labelkit status "$DATA"
echo "report: $DATA/.labelkit/report.html"
