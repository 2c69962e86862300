#!/usr/bin/env bash
# The runs behind docs/CONTINUAL.md: every strategy on Split MNIST, Split Fashion-MNIST and
# MANY over MNIST + Fashion-MNIST, at budgets 1 and 10 images per class, with a light CPU
# setting (cpu-quick with 10 distillation iterations and width-16 networks).
# Usage: bench/continual_docs.sh [a|b|all]   (a and b are two halves that can run side by side)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src OMP_NUM_THREADS=1
LIGHT=(--preset cpu-quick --iterations 10 --set inner.width=16 --width 16 --steps 150 --batch-size 64
       --test-per-class 200 --strategy all --no-progress)
run() {  # benchmark budget
  local stem="continual_${1/:/_}_ipc$2"; stem="${stem/,/+}"
  nice -n 10 python -m memdistill continual --benchmark "$1" --budget-ipc "$2" "${LIGHT[@]}" \
    --out "docs/bench/$stem.json" --plot "docs/img/$stem.png"
}
half="${1:-all}"
if [[ $half == a || $half == all ]]; then
  run split-mnist 1; run split-mnist 10; run many:mnist,fashion-mnist 1
fi
if [[ $half == b || $half == all ]]; then
  run split-fashion-mnist 1; run split-fashion-mnist 10; run many:mnist,fashion-mnist 10
fi
