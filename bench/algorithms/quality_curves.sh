#!/usr/bin/env bash
# The quality/bytes curves of the sharing modes: krul-bench-quality at
# several fixed ratios (minicache, krul-fixed, krul) and quality budgets
# (krul), with fp32 and fp16 stored KV, then two PNGs (gnuplot): stored
# bytes (how many times fewer than the full fp32 KV) against the perplexity
# increase and against top-1 agreement.
#
#   bench/algorithms/quality_curves.sh NAME MODEL CONVERSATIONS PAIR_CALIBRATION OUTDIR [BIN]
#
# NAME labels the plots (e.g. krulmix); CONVERSATIONS is krul-bench-quality's
# --conversations (comma-separated files); PAIR_CALIBRATION comes from
# krul-bench-pair-oracle --write_calibration on the same conversations
# (each replayed conversation leaves its own reference out); BIN is the
# build's bin folder (default build/bin). Writes OUTDIR/NAME.tsv (one row
# per mode and run), OUTDIR/NAME-ppl.png and OUTDIR/NAME-agreement.png.
# RATIOS, BUDGETS and DTYPES (space-separated; defaults below) size the
# sweep; PLOT_ONLY=1 only redraws the plots from an existing OUTDIR/NAME.tsv.
# Takes 20-40 minutes on a loaded 2-core machine with the defaults.
set -euo pipefail
if [[ $# -lt 5 ]]; then
  sed -n '2,16p' "$0" >&2
  exit 1
fi
name=$1 model=$2 conversations=$3 calibration=$4 out=$5 bin=${6:-build/bin}
mkdir -p "$out"
tsv="$out/$name.tsv"
ratios=${RATIOS:-1.2 1.33 1.5 1.71 2.0}
budgets=${BUDGETS:-0.005 0.01 0.02 0.04}
dtypes=${DTYPES:-f32 f16}
tokenizer="$(dirname "$model")/tok512.bin"
bench() {
  "$bin/krul-bench-quality" --model "$model" --tokenizer "$tokenizer" \
    --conversations "$conversations" --pair_calibration "$calibration" --append_tsv "$tsv" \
    "$@" > /dev/null
}
if [[ -z ${PLOT_ONLY:-} ]]; then
  : > "$tsv"
  for dtype in $dtypes; do
    for ratio in $ratios; do
      echo "$name: $dtype ratio $ratio" >&2
      bench --kv_dtype "$dtype" --ratio "$ratio" --modes minicache,krul-fixed,krul
    done
    for budget in $budgets; do
      echo "$name: $dtype budget $budget" >&2
      bench --kv_dtype "$dtype" --ratio 2.0 --krul_quality_budget "$budget" --modes krul
    done
  done
fi
rm -f "$out/$name"-*.dat

# One data file per series: fixed-ratio modes by label and dtype, budgets
# as "krul (budget)", load as single points.
awk -F'\t' -v dir="$out" -v name="$name" '
  { series = $1; if ($1 == "krul" && $3 > 0) series = "krul-budget";
    file = dir "/" name "-" series "-" $4 ".dat";
    print $6, $7, $8 >> file }' "$tsv"
plot() {  # column, ylabel, output[, extra series[, gnuplot settings]]
  local series="${4:-}" sep=""
  [[ -n $series ]] && sep=", "
  for s in minicache krul-fixed krul krul-attention krul-budget load; do
    for d in f32 f16; do
      local f="$out/$name-$s-$d.dat"
      [[ -s "$f" ]] || continue
      sort -n -o "$f" "$f"
      local title="$s $d"
      [[ $s == krul-budget ]] && title="krul, quality budget, $d"
      local style="linespoints"
      [[ $s == load ]] && style="points pointsize 2"
      local dash=1
      [[ $d == f16 ]] && dash=2
      local color
      case $s in  # one colour per mode in both plots
        minicache) color='#1b9e77' ;; krul-fixed) color='#d95f02' ;; krul) color='#1f78b4' ;;
        krul-attention) color='#808080' ;; krul-budget) color='#e7298a' ;; *) color='#000000' ;;
      esac
      series+="$sep'$f' using 1:$1 with $style lc rgb '$color' dashtype $dash title '$title'"
      sep=", "
    done
  done
  gnuplot <<EOF
set terminal pngcairo size 900,600 noenhanced
set output '$3'
set title '$name: stored KV vs quality, krul-bench-quality (held-out conversations)'
set xlabel 'times fewer bytes than the full fp32 KV'
set ylabel '$2'
set key outside right
set grid
${5:-}
plot $series
EOF
}
# The goal region (a few percent) in view; minicache and ratio 2 run off
# the top (their values are in the TSV).
plot 2 "perplexity increase (%), clipped at ${PPL_MAX:-5}" "$out/$name-ppl.png" \
  "1 with lines lc rgb 'gray' dashtype 3 title 'goal: 1%'" "set yrange [-1:${PPL_MAX:-5}]"
plot 3 "top-1 agreement with the uncompressed cache" "$out/$name-agreement.png" "" \
  "set yrange [0.65:1.01]"
echo "wrote $tsv, $out/$name-ppl.png, $out/$name-agreement.png" >&2
