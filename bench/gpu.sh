#!/usr/bin/env bash
# One unattended measurement run on one CUDA device, from a clean clone:
#
#   bench/gpu.sh [FOLDER] [--device cuda] [--quick] [--budget SECONDS] [--skip-install]
#
# `make install`, then every bench (precision, throughput, methods, tcl; each fp32 and the half precisions
# side by side), the VLM rows (bench/vlm.py at the real sizes of Qwen2.5-VL 7B and Qwen3-VL 4B, random bf16
# weights), `globallocal evaluate` on the synthetic REFER fixture in every precision, and, when two GPUs
# exist, the same evaluation as a 2-process NCCL torchrun. Tables, logs and `nvidia-smi` go to FOLDER
# (default: $OUT, else bench_out/). The whole run keeps to --budget seconds (default 540, i.e. 9 minutes,
# counted from the start, install included): each step gets its cap or what is left, and a step cut short
# is named in summary.md (with the rows it printed), so the run always ends with its tables written. --device cpu --quick checks the
# script itself on a machine without a GPU; --skip-install uses the venv that is already there.
set -uo pipefail

cd "$(dirname "$0")/.."
FOLDER=${OUT:-bench_out}
DEVICE=cuda
QUICK=()
BUDGET=540
INSTALL=1
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --quick) QUICK=(--quick); shift ;;
        --budget) BUDGET=$2; shift 2 ;;
        --skip-install) INSTALL=0; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        -*) echo "bench/gpu.sh: unknown option $1; see --help" >&2; exit 2 ;;
        *) FOLDER=$1; shift ;;
    esac
done
mkdir -p "$FOLDER"
FOLDER=$(cd "$FOLDER" && pwd)
END=$(( $(date +%s) + BUDGET ))
SUMMARY=$FOLDER/summary.md
PYTHON=${VENV:-.venv}/bin/python
export HF_HUB_OFFLINE=1  # random weights throughout: nothing to download

echo "# bench/gpu.sh on $(hostname), $(date -u +%FT%TZ), device $DEVICE${QUICK[*]:+, quick}" > "$SUMMARY"

# step NAME CAP COMMAND...: runs COMMAND for at most CAP seconds (0: no cap) and what is left of the budget,
# output to FOLDER/NAME.log.
step() {
    local name=$1 cap=$2; shift 2
    local left=$(( END - $(date +%s) ))
    # The caps are sized for a GPU; a CPU check (--device cpu) runs each step to the end of the budget.
    if [[ $DEVICE == cuda* ]] && [ "$cap" -gt 0 ] && [ "$cap" -lt "$left" ]; then
        left=$cap
    fi
    if [ "$left" -lt 5 ]; then
        echo "- $name: not run, the budget was spent" >> "$SUMMARY"
        return
    fi
    local start=$SECONDS
    timeout --kill-after=5 "$left" "$@" > "$FOLDER/$name.log" 2>&1
    local status=$?
    local note="done"
    [ "$status" -eq 124 ] && note="cut short after $left s"
    [ "$status" -ne 0 ] && [ "$status" -ne 124 ] && note="failed (exit status $status; see $name.log)"
    echo "- $name: $note in $(( SECONDS - start )) s" >> "$SUMMARY"
}

smi() {
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi > "$FOLDER/nvidia-smi-$1.txt" 2>&1
    fi
}

if [ "$INSTALL" = 1 ]; then
    step install 0 make install
fi
smi before

if [[ $DEVICE == cuda* ]]; then
    PRECISIONS=(fp32 fp16 bf16)
else
    PRECISIONS=(fp32 bf16)
fi
GPUS=0
if [[ $DEVICE == cuda* ]]; then
    GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
fi
PRECISION_LIST=$(IFS=,; echo "${PRECISIONS[*]}")

FIXTURE=$FOLDER/refer_fixture
"$PYTHON" -c "
import sys; from pathlib import Path
sys.path.insert(0, 'tests')
from refer_fixtures import build_refer
if not Path(sys.argv[1]).exists():
    build_refer(Path(sys.argv[1]))
" "$FIXTURE" > "$FOLDER/fixture.log" 2>&1 || echo "- fixture: failed (see fixture.log)" >> "$SUMMARY"

# The evaluation: ViT-B-16 with random weights on the fixture's ground-truth proposals, each precision.
EVALUATE=(evaluate --dataset refcoco --split val --data-root "$FIXTURE/data" --images "$FIXTURE/train2014"
          --proposals gt --clip-model ViT-B-16 --clip-weights random)
for precision in "${PRECISIONS[@]}"; do
    rm -rf "$FOLDER/evaluate-$precision"
    step "evaluate-$precision" 60 "$PYTHON" -m globallocal "${EVALUATE[@]}" --device "$DEVICE" --precision "$precision" \
        --out "$FOLDER/evaluate-$precision"
done
if [ "$GPUS" -ge 2 ]; then
    rm -rf "$FOLDER/evaluate-nccl"
    step evaluate-nccl 90 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 2 -m globallocal \
        "${EVALUATE[@]}" --device cuda --out "$FOLDER/evaluate-nccl"
else
    echo "- evaluate-nccl: not run, $GPUS CUDA devices (needs 2)" >> "$SUMMARY"
fi

BENCH=(--device "$DEVICE" --precisions "$PRECISION_LIST" "${QUICK[@]}")
# Shortest first, each capped, so that the longest (throughput: a process per row) cannot starve the others.
step tcl 60 "$PYTHON" bench/tcl.py "${BENCH[@]}"
# The VLM at real sizes, random bf16 weights built on the GPU (on a CPU with --quick: the configurations counted
# on the meta device, the rows at bench/vlm.py's CPU size): the 1 MP photo, 3 expressions (one examining the
# masks), each preset with the photo prefix reused and in the authors' structure.
step vlm 140 "$PYTHON" bench/vlm.py --device "$DEVICE" --models real --photos 1 --expressions 3 "${QUICK[@]}"
step methods 90 "$PYTHON" bench/methods.py "${BENCH[@]}"
step precision 60 "$PYTHON" bench/precision.py "${BENCH[@]}"
step throughput 0 "$PYTHON" bench/throughput.py "${BENCH[@]}"
smi after

# The tables: every bench prints Markdown tables; the evaluations' reports say what each precision scored.
for name in precision throughput methods tcl vlm; do
    if [ -f "$FOLDER/$name.log" ]; then
        printf '\n## %s\n\n' "$name" >> "$SUMMARY"
        # A finished bench ends with its table; one cut short leaves the rows it printed as it went.
        if grep -q '^| --- ' "$FOLDER/$name.log"; then
            grep -E '^(\||device:)|load average|parameters built' "$FOLDER/$name.log" >> "$SUMMARY"
        else
            grep -E '^(row:|device:)|parameters built' "$FOLDER/$name.log" >> "$SUMMARY"
        fi
    fi
done
printf '\n## evaluate\n\n' >> "$SUMMARY"
for report in "$FOLDER"/evaluate-*/report.json; do
    [ -f "$report" ] && "$PYTHON" -c "
import json, sys
report = json.load(open(sys.argv[1]))
metrics = report['metrics']
print(f\"- {sys.argv[1].split('/')[-2]}: oIoU {metrics['oIoU']}, mIoU {metrics['mIoU']}\")
" "$report" >> "$SUMMARY"
done
cat "$SUMMARY"
