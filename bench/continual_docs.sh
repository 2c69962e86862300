#!/usr/bin/env bash
# The runs behind docs/CONTINUAL.md (issues 6 and 17): every strategy on Split MNIST, Split
# Fashion-MNIST and MANY over MNIST + Fashion-MNIST, at per-class budgets 1 and 10 images per
# class and at a fixed total of 1 image per class of the final class count, for 3 class orders
# (--seed 0 1 2), with a light CPU setting (cpu-quick with 10 distillation iterations and
# width-16 networks). Then: PYTHONPATH=src python bench/continual_tables.py docs/bench/continual_*_s*.json
# Usage: bench/continual_docs.sh [a|b|all]   (a and b are two halves that can run side by side)
# Environment:
#   SEEDS="0 1 2"      the class orders
#   DISTILL_SECONDS=S  wall-time limit of each task's distillation, the same for memories,
#                      images and shared (default: none, the 10 iterations alone decide)
#   START=1            the starting points instead: `shared` and `memories` with --iterations 0
#                      (each task's memory as initialised, never distilled), written as
#                      continual_start_*.json; continual_tables.py shows them as "(start)" rows
#   STRONG=1           the stronger protocol of docs/CONTINUAL.md instead, at budget 1 only (per class
#                      and fixed total): 40 distillation iterations and at most 60 s of distillation
#                      per task, a width-32 classifier trained 1000 steps of batch 64 after each task;
#                      the fixed-total runs hold shared, herding and random only (finetune and joint do
#                      not depend on the budget). Written as continual_strong_*.json (with START=1:
#                      continual_strong_start_*.json, `shared` alone; their plots go to a temporary folder); the two
#                      halves a and b share the runs
#   STRONG_BUDGET=10   with STRONG=1: the stronger protocol at 10 images per class instead (per class
#                      only; shared, memories, herding and random: finetune and joint are the budget-1
#                      runs'), written as continual_strong_*_ipc10_*.json
#   BENCHMARKS="..."   with STRONG=1: the benchmarks to run (default: split-mnist
#                      split-fashion-mnist many:mnist,fashion-mnist)
#   SMOKE=1            a minimal check of the script (Split MNIST, seed 0, both budget modes,
#                      1 distillation iteration, 5 classifier steps) written to $SMOKE_OUT
#                      (default /tmp/continual_smoke), never to docs/
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src OMP_NUM_THREADS=1
SEEDS=${SEEDS:-0 1 2}
OUT=docs/bench IMG=docs/img
LIGHT=(--preset cpu-quick --iterations 10 --set inner.width=16 --width 16 --steps 150 --batch-size 64
       --test-per-class 200 --no-progress)
if [[ ${STRONG:-0} == 1 ]]; then
  LIGHT=(--preset cpu-quick --iterations 40 --set inner.width=16 --width 32 --steps 1000 --batch-size 64
         --test-per-class 200 --no-progress)
  DISTILL_SECONDS=${DISTILL_SECONDS:-60}
fi
if [[ -n ${DISTILL_SECONDS:-} ]]; then LIGHT+=(--distill-seconds "$DISTILL_SECONDS"); fi
if [[ ${SMOKE:-0} == 1 ]]; then
  LIGHT=(--preset cpu-quick --iterations 1 --set inner.width=8 --set inner.steps=2 --set outer.pool_size=0
         --width 8 --steps 5 --batch-size 32 --test-per-class 10 --no-progress)
  SEEDS=0 OUT=${SMOKE_OUT:-/tmp/continual_smoke} IMG=${SMOKE_OUT:-/tmp/continual_smoke}
fi
PREFIX=continual EXTRA=()
if [[ ${STRONG:-0} == 1 ]]; then PREFIX=continual_strong; fi
if [[ ${START:-0} == 1 ]]; then PREFIX=${PREFIX}_start EXTRA=(--iterations 0); fi
mkdir -p "$OUT" "$IMG"
run() {  # benchmark budget-flag value seed
  local unit strategy=() img="$IMG"
  case $2 in --budget-ipc) unit=ipc$3 ;; --budget-total-ipc) unit=totalipc$3 ;; esac
  if [[ ${START:-0} == 1 ]]; then  # `memories` has no fixed-total mode
    strategy=(--strategy "$([[ $2 == --budget-total-ipc || ${STRONG:-0} == 1 ]] && echo shared || echo shared,memories)")
    img=$(mktemp -d)  # no pictures of the starting points in docs/
  elif [[ ${STRONG:-0} == 1 ]]; then
    if [[ $2 == --budget-total-ipc ]]; then strategy=(--strategy shared,herding,random)
    elif [[ $3 == 10 ]]; then strategy=(--strategy shared,memories,herding,random)
    else strategy=(--strategy all); fi
    img=$(mktemp -d)  # docs/CONTINUAL.md shows the overview table of these runs, no pictures
  else
    strategy=(--strategy all)
  fi
  local stem="${PREFIX}_${1/:/_}_${unit}_s$4"; stem="${stem/,/+}"
  nice -n 10 python -m memdistill continual --benchmark "$1" "$2" "$3" --seed "$4" "${LIGHT[@]}" \
    "${EXTRA[@]}" "${strategy[@]}" --out "$OUT/$stem.json" --plot "$img/$stem.png"
}
every_budget() {  # benchmark
  for s in $SEEDS; do
    run "$1" --budget-ipc 1 "$s"; run "$1" --budget-ipc 10 "$s"; run "$1" --budget-total-ipc 1 "$s"
  done
}
if [[ ${SMOKE:-0} == 1 ]]; then
  run split-mnist --budget-ipc 1 0; run split-mnist --budget-total-ipc 1 0
  python bench/continual_tables.py --img "$IMG" "$OUT"/continual_*_s0.json
  exit
fi
half="${1:-all}"
if [[ ${STRONG:-0} == 1 ]]; then  # the per-class runs (the longer ones) alternate between the halves
  budget=${STRONG_BUDGET:-1}
  if [[ $budget != 1 && $budget != 10 ]]; then
    echo "STRONG_BUDGET must be 1 or 10 (images per class), got '$budget'" >&2; exit 2
  fi
  mine() { [[ $half == all || $half == "$1" ]]; }  # half a or b
  i=0  # (seed, benchmark) pairs so far; the pair's per-class run goes to half a when i is even
  for s in $SEEDS; do
    for b in ${BENCHMARKS:-split-mnist split-fashion-mnist many:mnist,fashion-mnist}; do
      if ((i % 2 == 0)); then first=a other=b; else first=b other=a; fi
      if mine $first; then run "$b" --budget-ipc "$budget" "$s"; fi
      if [[ $budget == 1 ]] && mine $other; then run "$b" --budget-total-ipc 1 "$s"; fi  # fixed total: budget 1 only
      i=$((i + 1))
    done
  done
  exit
fi
if [[ $half == a || $half == all ]]; then every_budget split-mnist; every_budget many:mnist,fashion-mnist; fi
if [[ $half == b || $half == all ]]; then every_budget split-fashion-mnist; fi
