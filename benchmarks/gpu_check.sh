#!/usr/bin/env bash
# The GPU check (issue 17, item 7) in one call, on one H100/H200: the GPU-marked tests, then the
# GPU benchmarks (ACM at N = 1000 and 5000, CG augmentation, fused SGD, NT/ST epoch throughput
# at ResNet-18 CIFAR scale on CIFAR-shaped random uint8 images, the loader) within 8 minutes,
# their rows recorded by benchmarks/harness.py; then one end-to-end ST-Full run on
# Fashion-MNIST when its four files are in $ST_FAST_FMNIST. On a machine without a CUDA GPU it
# says so, dry-runs every step (prints it; the scripts import and parse their arguments; the
# tests are collected; the end-to-end command lines parse) and exits 0 (1 if a check fails).
#
#   benchmarks/gpu_check.sh
#   ST_FAST_FMNIST=DIR benchmarks/gpu_check.sh   DIR: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
#   GPU_CHECK_DRY_RUN=1 benchmarks/gpu_check.sh  the dry run, also on a GPU machine
#
# Where rows go: with $OUT set (the device tool's folder that comes back), $OUT/gpu_rows.jsonl,
# the *_gpu.md pages beside it and a log per step; add them to the committed table with
#   python benchmarks/harness.py merge FOLDER/gpu_rows.jsonl
# Without $OUT, straight into benchmarks/results/results.jsonl (pages regenerated in place).
# What the GPU machine has: torch 2.11, triton 3.6, no package registry, no internet, no
# datasets; st_fast need not be installed (see "importable" below).

set -u
cd "$(dirname "$0")/.."
REPO=$PWD
START=$SECONDS
DEADLINE=${GPU_CHECK_SECONDS:-560}  # the whole call, the end-to-end run included (calls get 600 s)

if [ -n "${OUT:-}" ]; then
    export ST_FAST_BENCH_TABLE=$OUT/gpu_rows.jsonl
    LOGS=$OUT/logs
else
    LOGS=$(mktemp -d /tmp/gpu_check.XXXXXX)
fi
mkdir -p "$LOGS"
WORK=$(mktemp -d /tmp/gpu_check_work.XXXXXX)  # the poisoned set (47 MB) must not go back in $OUT
trap 'rm -rf "$WORK"' EXIT

DRY=${GPU_CHECK_DRY_RUN:-0}
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "no CUDA GPU here: dry run of every step (nothing is measured), then exit 0"
    DRY=1
fi
python -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"

# importable: an installed st_fast maps kernels/ and csrc/ into the package (setup.py); on a
# machine where it is not installed, the source tree does the same with two links
if ! python -c "import st_fast.kernels" 2>/dev/null; then
    if [ "$DRY" = 1 ]; then
        echo "st_fast is not installed: the GPU run would link st_fast/kernels -> ../kernels and st_fast/csrc -> ../csrc"
    else
        ln -sfn ../kernels st_fast/kernels && ln -sfn ../csrc st_fast/csrc
    fi
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi
for module in numpy scipy sklearn openTSNE threadpoolctl torchvision matplotlib yaml pytest triton; do
    python -c "import $module" 2>/dev/null || echo "missing module: $module (steps that need it fail)"
done

FAILED=()
# step NAME BUDGET_S DRY_COMMAND -- COMMAND...: run COMMAND under min(BUDGET_S, time left), its
# output in $LOGS/NAME.log; in the dry run print it and run DRY_COMMAND instead
step() {
    local name=$1 budget=$2 dry_command=$3
    shift 4
    local left=$((DEADLINE - (SECONDS - START)))
    [ "$budget" -gt "$left" ] && budget=$left
    local shown="$*"
    echo "== $name (at most ${budget} s): ${shown:0:200}"
    if [ "$DRY" = 1 ]; then
        bash -c "$dry_command" > "$LOGS/$name.log" 2>&1 && echo "   dry run: ok" \
            || { echo "   dry run: FAILED"; tail -n 20 "$LOGS/$name.log"; FAILED+=("$name"); }
        return
    fi
    if [ "$budget" -lt 10 ]; then
        echo "   skipped: the call's time is spent"
        FAILED+=("$name (no time left)")
        return
    fi
    local t0=$SECONDS
    if timeout --signal=INT --kill-after=15 "$budget" "$@" > "$LOGS/$name.log" 2>&1; then
        echo "   ok in $((SECONDS - t0)) s"
    else
        echo "   FAILED (status $?) after $((SECONDS - t0)) s; last lines:"
        FAILED+=("$name")
    fi
    tail -n 25 "$LOGS/$name.log"
}

# bench NAME BUDGET_S SCRIPT ARGS...: a benchmark script recording its rows (--write)
bench() {
    local name=$1 budget=$2 script=benchmarks/$3
    shift 3
    step "$name" "$budget" "python $script $* --write --parse-only" -- python "$script" "$@" --write
}

# ---------------------------------------------------------------- tests and benchmarks (8 min)
step gpu-tests 90 "python -m pytest -q -m gpu --collect-only -p no:cacheprovider tests" \
    -- python -m pytest -q -m gpu -p no:cacheprovider tests
bench acm 140 bench_acm.py --rounds 3 --large 5000 --large-rounds 1 --large-backends exact --threads 0
bench augment 30 bench_augment.py --rounds 7
bench optim 70 bench_optim.py --device cuda --rounds 15 --steps 10  # may first build the CUDA extension
bench throughput 90 bench_throughput.py --device cuda --rounds 3
bench loader 30 bench_loader.py --device cuda --rounds 3

# ---------------------------------------------------------------- one end-to-end ST run
FMNIST=${ST_FAST_FMNIST:-}
have_fmnist=1
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -n "$FMNIST" ] && { [ -f "$FMNIST/$f" ] || [ -f "$FMNIST/$f.gz" ]; } || have_fmnist=0
done
if [ "$have_fmnist" = 1 ]; then
    RUN=${OUT:-$WORK}/e2e-st-full
    POISON=(poison --attack sp --dataset fashion-mnist --data-root "$FMNIST" --out "$WORK/sp.pt")
    TRAIN=(train --method st-full --dataset fashion-mnist --arch resnet18 --epochs 10 --device cuda
           --data-root "$FMNIST" --poison "$WORK/sp.pt" --out "$RUN" --no-progress)
    e2e() {  # keeps the run's history, checks, summary and plots, not its 45 MB checkpoint
        python -m st_fast "${POISON[@]}" && python -m st_fast "${TRAIN[@]}" \
            && rm -f "$RUN/checkpoint.pt" && cat "$RUN/summary.json"
    }
    # the dry run parses both command lines with the CLI's own parser
    parse='import sys; from st_fast.cli import build_parser; i = sys.argv.index("--")
for argv in (sys.argv[1:i], sys.argv[i + 1:]): build_parser().parse_args(argv)
print("both command lines parse")'
    echo "   e2e: python -m st_fast ${POISON[*]}; python -m st_fast ${TRAIN[*]}"
    step e2e-st-full 100 "$(printf '%q ' python -c "$parse" "${POISON[@]}" -- "${TRAIN[@]}")" \
        -- bash -c "$(declare -p POISON TRAIN RUN); $(declare -f e2e); e2e"
else
    echo "== e2e-st-full: skipped (set ST_FAST_FMNIST to a folder holding the four Fashion-MNIST files)"
fi

echo "== done in $((SECONDS - START)) s; logs in $LOGS${OUT:+; rows in $ST_FAST_BENCH_TABLE}"
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "failed: ${FAILED[*]}"
    exit 1
fi
exit 0
