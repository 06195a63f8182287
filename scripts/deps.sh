#!/usr/bin/env bash
# Install what crux needs to build and test, from Debian's archive (Debian 12).
# Idempotent; run as root (or through sudo). `deps.sh --list` prints the packages.
set -euo pipefail
pkgs=(build-essential cmake pkg-config libcriterion-dev libhwloc-dev libisal-dev
      libibverbs-dev librdmacm-dev iproute2 procps
      zlib1g-dev dataset-fashion-mnist                  # examples/train
      gnuplot-nox                                       # bench/train_sweep plots
      slurmctld slurmd slurm-client munge               # multi-host and Slurm tests
      # Soft-RoCE VM tests (tests/vm/rxe-vm): QEMU guests booting Debian's kernel with rdma_rxe
      qemu-system-x86 linux-image-amd64 busybox-static rdma-core ibverbs-providers ibverbs-utils
      rdmacm-utils perftest kmod cpio xz-utils vde2 util-linux)
if [ "${1:-}" = --list ]; then
  echo "${pkgs[@]}"
  exit 0
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
