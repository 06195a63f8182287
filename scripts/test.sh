#!/usr/bin/env bash
# Fresh machine -> test results: install dependencies, build twice (optimised with
# -Werror, and with -fsanitize=address,undefined), run the whole suite on both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
jobs=$(nproc)
status=0
for variant in release asan; do
  dir=build-test-$variant
  opts=(-DCRUX_WERROR=ON)
  [ "$variant" = asan ] && opts+=(-DCRUX_SANITIZE=ON)
  echo "=== $variant build ==="
  cmake -S . -B "$dir" "${opts[@]}" >/dev/null
  cmake --build "$dir" -j"$jobs"
  echo "=== $variant tests ==="
  # ASan keeps leak checks on; shm segments from a killed test never outlive it.
  ( cd "$dir" && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
      ctest --output-on-failure --timeout 1200 ) || status=1
done
exit $status
