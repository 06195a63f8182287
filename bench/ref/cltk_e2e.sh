#!/usr/bin/env bash
# cltk_e2e.sh - compressed vs dense allreduce end to end between two namespace hosts.
#
#   bench/ref/cltk_e2e.sh BUILD_DIR [--bw RATE] [--runs N] [--count FLOATS] [--density D]
#                         [--codec C] [-i ITERS] [--also BUILD_DIR2] [--add]
#
# Brings up 2 hosts with cluster-scripts/netns-hosts (prefix cxe, tbf RATE on both
# directions of each host's link; default 1gbit), then runs, alternately and N times
# (default 3), crux_osu_allreduce dense and with --codec C --density D (default cltk,
# 0.001) on COUNT floats (default 25.6M, ResNet-50's gradient) over TCP, one rank per
# host. Prints every run's row, the medians and the ratio dense / compressed of the
# medians, then `uptime` (the machine is shared: compare only within one run).
# --also BUILD_DIR2: each run also times the codec with BUILD_DIR2's binaries (e.g. an
# older commit), so two versions are compared under the same load.
# --add: each run also times BUILD_DIR's codec through crux_compressed_allreduce_add
# (out += estimate, no dense output written), under the same load.
# Needs root. The hosts are torn down at exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NH="$HERE/../../cluster-scripts/netns-hosts"
[ $# -ge 1 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2; }
B="$(cd "$1" && pwd)"; shift
BW=1gbit RUNS=3 COUNT=25600000 DENSITY=0.001 CODEC=cltk ITERS=10 ALSO="" ADD=0
while [ $# -gt 0 ]; do
  case $1 in
    --bw) BW=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --count) COUNT=$2; shift 2 ;;
    --density) DENSITY=$2; shift 2 ;;
    --codec) CODEC=$2; shift 2 ;;
    -i) ITERS=$2; shift 2 ;;
    --also) ALSO="$(cd "$2" && pwd)"; shift 2 ;;
    --add) ADD=1; shift ;;
    *) echo "cltk_e2e.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
PFX=cxe
"$NH" down --prefix $PFX >/dev/null 2>&1 || true
"$NH" up -n 2 --bw "$BW" --prefix $PFX
trap '"$NH" down --prefix $PFX >/dev/null 2>&1' EXIT
SIZE=$((COUNT * 4))
run() { # BUILD ARGS... -> the data row
  local b=$1; shift
  "$NH" run --prefix $PFX --layout 1,1 -- env CRUX_TRANSPORT=tcp \
    "$b/crux_osu_allreduce" -m "$SIZE:$SIZE" "$@" | grep -v '^#' | tail -1
}
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo "# $CODEC density $DENSITY vs dense, $COUNT floats, 2 hosts, tbf $BW, $RUNS runs; start: $(uptime)"
echo "# dense: Size AvgLatency(us); $CODEC: Size AvgLatency(us) Encode Comm Decode Wire(B)"
D=() C=() A=() S=()
for ((r = 1; r <= RUNS; r++)); do
  d=$(run "$B" -i 3 -x 1); echo "dense  $d"; D+=("$(echo "$d" | awk '{print $2}')")
  c=$(run "$B" --codec "$CODEC" --density "$DENSITY" -i "$ITERS" -x 3); echo "$CODEC  $c"
  C+=("$(echo "$c" | awk '{print $2}')")
  if [ -n "$ALSO" ]; then
    a=$(run "$ALSO" --codec "$CODEC" --density "$DENSITY" -i "$ITERS" -x 3); echo "$CODEC(also)  $a"
    A+=("$(echo "$a" | awk '{print $2}')")
  fi
  if [ "$ADD" = 1 ]; then
    s=$(run "$B" --codec "$CODEC" --density "$DENSITY" --add -i "$ITERS" -x 3); echo "$CODEC(add)  $s"
    S+=("$(echo "$s" | awk '{print $2}')")
  fi
done
md=$(printf '%s\n' "${D[@]}" | median); mc=$(printf '%s\n' "${C[@]}" | median)
awk -v d="$md" -v c="$mc" -v bw="$BW" -v codec="$CODEC" 'BEGIN {
  printf "# median dense %.1f ms, %s %.2f ms: %.1fx at %s\n", d / 1e3, codec, c / 1e3, d / c, bw }'
if [ -n "$ALSO" ]; then
  ma=$(printf '%s\n' "${A[@]}" | median)
  awk -v d="$md" -v c="$ma" -v bw="$BW" -v codec="$CODEC" -v b="$ALSO" 'BEGIN {
    printf "# median %s with %s: %.2f ms: %.1fx at %s\n", codec, b, c / 1e3, d / c, bw }'
fi
if [ "$ADD" = 1 ]; then
  ms=$(printf '%s\n' "${S[@]}" | median)
  awk -v d="$md" -v c="$ms" -v bw="$BW" -v codec="$CODEC" 'BEGIN {
    printf "# median %s --add (out += estimate): %.2f ms: %.1fx at %s\n", codec, c / 1e3, d / c, bw }'
fi
echo "# end: $(uptime)"
