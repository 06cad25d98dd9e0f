#!/usr/bin/env bash
# CI gate: fail the job when too many labels in DATA look wrong.
#   check-labels.sh DATA [MAX_RATE]
# Exit 0: the label-issue rate is at most MAX_RATE; exit 3: above it (a review queue is written);
# exit 1/2: labelkit itself failed (bad data, bad options).
set -uo pipefail
DATA=${1:?usage: check-labels.sh DATA [MAX_RATE]}
MAX_RATE=${2:-0.05}
LABELKIT=${LABELKIT:-labelkit}
OUT=${OUT:-label-check}
mkdir -p "$OUT"

$LABELKIT detect-noise "$DATA" --fail-above "$MAX_RATE" --export-review "$OUT/review.csv" --json > "$OUT/summary.json"
status=$?
case $status in
  0) echo "labels OK: $(python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"{s['n_issues']} of {s['n_analysed']} flagged ({s['issue_rate']:.1%})\")" "$OUT/summary.json")" ;;
  3) echo "too many label issues (> $MAX_RATE); review queue: $OUT/review.csv" ;;
  *) echo "labelkit failed with exit code $status" ;;
esac
exit $status
