#!/bin/sh
# Side by side with diffusers (../shared/bench/README.md sets up the reference): each row of `build/bench` and the
# same work in diffusers_bench.py, alternately, one process at a time, each under /usr/bin/time for the process's
# peak RSS. Prints a Markdown table: seconds per call, the peak RSS of the compute phase (the high-water mark reset
# once the weights are in memory; both sides measure it so) and of the whole process, and the speed ratio.
# Usage: bench/compare.sh MODEL_DIR DIFFUSERS_BENCH_PY [REPS] [ROW...]
#   MODEL_DIR: full-size SD v1-4 in the diffusers layout (random weights: lsd_model_create_random + lsd_model_save)
#   REPS: the reference's timed calls (median; default 2). Ours times one call after one warm-up.
#   ROW: rows of ours to compare (default: every row with a counterpart that this CPU runs fast).
set -eu
model=$1 ref=$2 reps=${3:-2}
shift 2; [ $# -gt 0 ] && shift
bench=${BENCH:-build/bench}
export LSD_DATA_DIR=${LSD_DATA_DIR:-data}
threads=${THREADS:-2}

counterpart() { # our row -> "mode size" of diffusers_bench.py
    case $1 in
    unet32) echo "unet 32" ;; unet64) echo "unet 64" ;; unet64_bf16) echo "unet_bf16 64" ;;
    vae) echo "vae 64" ;; train32) echo "lora 32" ;; train64) echo "lora 64" ;;
    train32_gc) echo "lora_gc 32" ;; train64_gc) echo "lora_gc 64" ;;
    *) echo "" ;;
    esac
}

rows="$*"
if [ -z "$rows" ]; then
    for r in $($bench | sed -n 's/^rows: //p'); do
        [ -n "$(counterpart "$r")" ] && rows="$rows $r"
    done
fi

$bench | sed -n '1,2p'
# Both sides inherit the environment: an ISA cap here (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
# OPENBLAS_CORETYPE=Haswell) runs both on the AVX2 kernels of a CPU that has more.
for v in ONEDNN_MAX_CPU_ISA ATEN_CPU_CAPABILITY OPENBLAS_CORETYPE; do
    eval "val=\${$v:-}"
    if [ -n "$val" ]; then echo "$v=$val"; fi
done
echo
echo "| work | liblora_sd | peak RSS: compute / process | diffusers 0.27.2 | peak RSS: compute / process | speed ratio |"
echo "|---|---:|---:|---:|---:|---:|"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for r in $rows; do
    set -- $(counterpart "$r")
    /usr/bin/time -f "%M" -o "$tmp/ours.rss" $bench --threads "$threads" "$r" > "$tmp/ours.out"
    what=$(sed -n "s/^$r  *\(.*[^ ]\)  *[0-9.]* s  *peak RSS.*/\1/p" "$tmp/ours.out")
    ours=$(sed -n "s/^$r .* \([0-9.]*\) s  *peak RSS.*/\1/p" "$tmp/ours.out")
    OMP_NUM_THREADS=$threads /usr/bin/time -f "%M" -o "$tmp/ref.rss" /usr/bin/python3 "$ref" "$model" "$1" "$2" "$reps" \
        > "$tmp/ref.out" 2> "$tmp/ref.err" || { cat "$tmp/ref.err" >&2; exit 1; }
    ours_peak=$(sed -n "s/^$r .*peak RSS  *\([0-9.]*\) GB.*/\1/p" "$tmp/ours.out")
    theirs=$(sed -n 's/^RESULT .*"median_s": \([0-9.]*\).*/\1/p' "$tmp/ref.out")
    theirs_peak=$(sed -n 's/^RESULT .*"compute_peak_rss_MB": \([0-9]*\).*/\1/p' "$tmp/ref.out")
    gb() { awk -v k="$(tail -1 "$1")" 'BEGIN { printf "%.2f", k / 1048576 }'; }
    ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%.2f", b / a }')
    theirs_peak=$(awk -v m="$theirs_peak" 'BEGIN { printf "%.2f", m / 1024 }')
    echo "| $what | $ours s | $ours_peak / $(gb "$tmp/ours.rss") GB | $theirs s | $theirs_peak / $(gb "$tmp/ref.rss") GB |" \
        "${ratio}x |"
done
