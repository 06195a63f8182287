#!/usr/bin/env bash
# crux over verbs beside perftest on the same Soft-RoCE device, in one QEMU guest
# (tests/vm/rxe-vm), same run: ib_write_bw (4 MiB), ib_write_lat (8 B), then
# crux_osu_allreduce on 2 ranks with CRUX_TRANSPORT=verbs. Emulation is slow and the
# absolute numbers mean nothing; the ratios crux/perftest are what carry to hardware.
#   bash bench/verbs_vm.sh BUILD_DIR        (root; ~8 min on 2 loaded vCPUs)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:?usage: verbs_vm.sh BUILD_DIR}" && pwd)
work=$(mktemp -d /tmp/crux-verbs-vm.XXXXXX)
trap 'rm -rf "$work"' EXIT
cat > "$work/guest.sh" <<EOS
#!/bin/bash
echo "== ib_write_bw 4 MiB"
ib_write_bw -d rxe0 -x \$RXE_VM_GID -s 4194304 -n 100 -F >/dev/null 2>&1 &
sleep 1; ib_write_bw -d rxe0 -x \$RXE_VM_GID -s 4194304 -n 100 -F \$RXE_VM_IP 2>&1 | tail -3; wait
echo "== ib_write_lat 8 B"
ib_write_lat -d rxe0 -x \$RXE_VM_GID -s 8 -n 2000 -F >/dev/null 2>&1 &
sleep 1; ib_write_lat -d rxe0 -x \$RXE_VM_GID -s 8 -n 2000 -F \$RXE_VM_IP 2>&1 | tail -3; wait
echo "== crux_osu_allreduce, 2 ranks, CRUX_TRANSPORT=verbs"
CRUX_TRANSPORT=verbs $build/crux-run -n 2 --bind-to none $build/crux_osu_allreduce -m 8:16M -i 200 -x 20 --busbw
EOS
chmod +x "$work/guest.sh"
"$here/tests/vm/rxe-vm" -c 2 -m 2G -t 1200 -C "$work" -- ./guest.sh
