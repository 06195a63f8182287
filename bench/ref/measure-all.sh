#!/usr/bin/env bash
# measure-all.sh - every measurement behind the baselines (../shared/LIMITS.md),
# in order, each step (and, inside run-ref.sh, every size) waiting up to WAITQ s
# (default 120) for the machine to be >=90% idle: other tenants' VMs share these
# 2 vCPUs. With CRUX_BUILD_DIR=<crux cmake build dir> in the environment every
# run-ref.sh / ref_tcp.sh step adds a crux column (crux_osu_allreduce).
# Output: $OUT (default /tmp/crux-refbench-out/all-<timestamp>)/*.txt
#
# Origin: ../shared/tools/refbench/measure-all.sh, the reference tools behind the
# baseline measurements in ../shared/LIMITS.md; copied into crux's bench/ref/ so the
# project does not depend on ../shared. Changes: crux column via CRUX_BUILD_DIR,
# default directories under /tmp/crux-refbench-*.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-/tmp/crux-refbench-out/all-$(date +%Y%m%d-%H%M%S)}"
WAITQ="${WAITQ:-120}"
STEPS="${STEPS:-facts membw shm1 shm2 tcp-netns tcp-netns-10g tcp-loopback shm-np4}"
mkdir -p "$OUT"
BUILD="${REFBENCH_BUILD_DIR:-/tmp/crux-refbench-build}"

idle_pct() {
  local a b
  a=($(head -1 /proc/stat)); sleep "$1"; b=($(head -1 /proc/stat))
  awk -v a="${a[*]}" -v b="${b[*]}" 'BEGIN { n = split(a, x, " "); split(b, y, " ");
    for (i = 2; i <= n; i++) { t += y[i] - x[i]; if (i == 5 || i == 6) id += y[i] - x[i] }
    printf "%d", (t > 0 ? 100 * id / t : 0) }'
}
wait_quiet() {
  local w=0 i
  while :; do
    i=$(idle_pct 2)
    [ "$i" -ge 90 ] && { echo "# idle ${i}% after waiting ${w} s"; return 0; }
    [ "$w" -ge "$WAITQ" ] && { echo "# WARNING: still only ${i}% idle after ${w} s; running anyway"; return 0; }
    w=$((w + 2))
  done
}

"$HERE/run-ref.sh" --build-only >/dev/null
gcc -O2 -march=native -fopenmp -o "$BUILD/membw" "$HERE/membw.c"

set +e
for step in $STEPS; do
  echo "=== $step $(date -u +%T)" >&2
  case "$step" in
    facts)
      { lscpu | head -20; echo; lscpu | grep -i cache; echo "nproc: $(nproc)"; free -g;
        uname -r; echo "THP: $(cat /sys/kernel/mm/transparent_hugepage/enabled)";
        mpirun.openmpi --version | head -1; mpichversion | head -3;
        echo "glibc: $(ldd --version | head -1)"; gcc --version | head -1; } > "$OUT/facts.txt" 2>&1 ;;
    membw)
      { wait_quiet; echo "# OMP_PROC_BIND=true $BUILD/membw -s 256 -r 10";
        OMP_PROC_BIND=true "$BUILD/membw" -s 256 -r 10; echo "# idle after: $(idle_pct 2)%"; } > "$OUT/membw.txt" 2>&1 ;;
    shm1)
      "$HERE/run-ref.sh" --no-install --wait-quiet "$WAITQ" --out "$OUT/shm1" > "$OUT/shm1.txt" 2>&1 ;;
    shm2)
      "$HERE/run-ref.sh" --no-install --wait-quiet "$WAITQ" --no-hugetlb-check --out "$OUT/shm2" > "$OUT/shm2.txt" 2>&1 ;;
    shm-np4)   # oversubscribed (4 ranks, 2 vCPUs): few sizes, few iterations
      "$HERE/run-ref.sh" --no-install --wait-quiet "$WAITQ" --np 4 --only 4,1K,64K,1M,16M --iters 50 --warmup 5 \
        --no-hugetlb-check --out "$OUT/shm-np4" > "$OUT/shm-np4.txt" 2>&1 ;;
    tcp-netns)
      "$HERE/ref_tcp.sh" --wait-quiet "$WAITQ" --out "$OUT/tcp-netns" > "$OUT/tcp-netns.txt" 2>&1 ;;
    tcp-netns-10g)
      "$HERE/ref_tcp.sh" --rate 10gbit --wait-quiet "$WAITQ" --out "$OUT/tcp-netns-10g" > "$OUT/tcp-netns-10g.txt" 2>&1 ;;
    tcp-loopback)
      "$HERE/ref_tcp.sh" --mode loopback --wait-quiet "$WAITQ" --out "$OUT/tcp-loopback" > "$OUT/tcp-loopback.txt" 2>&1 ;;
    *) echo "unknown step $step" >&2 ;;
  esac
done
echo "# done: $OUT" >&2
