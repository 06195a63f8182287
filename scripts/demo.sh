#!/usr/bin/env bash
# Fresh machine -> running benchmark: install dependencies, build, and run the
# OSU-style allreduce benchmark on 2 local ranks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
exec ./build/crux-run -n 2 ./build/crux_osu_allreduce "$@"
