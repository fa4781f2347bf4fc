#!/usr/bin/env bash
# Real power cuts (by hand, not in CI; about an hour without KVM): the agent runs in a
# small QEMU VM with Debian's kernel whose data disk is an ext4 image file here, and the
# power is cut by killing QEMU at a random instant of an OTA install (download, verify,
# extract, fsyncs, switch, journal writes, commit, rollback) or of a QoS 1 outbox run
# with broker outages; and every crash state of three recorded installs is replayed
# from the kernel's dm-log-writes record (checked on this machine through loop mounts
# when it can, as root: minutes instead of hours). Each boot checks what the last cut left. See
# scripts/power_cut.py for the checks and README.md, "Real power cuts", for the figures.
#
# Needs (Debian packages): qemu-system-x86 linux-image-amd64 busybox-static e2fsprogs
# cpio dmsetup mosquitto mosquitto-clients. The kernel package is only read, for the VM.
#
# usage: scripts/test-power-cut.sh [--cuts N] [--scenario replay|ota|outbox|all] [--every N]
#                                  [--seed S]
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q "statically linked" || missing+=(busybox-static)
command -v file >/dev/null || missing+=(file)
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v cpio >/dev/null || missing+=(cpio)
command -v dmsetup >/dev/null || missing+=(dmsetup)
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v mosquitto_sub >/dev/null || missing+=(mosquitto-clients)
kernel=$(ls -1 /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -1 || true)
kver=${kernel#/boot/vmlinuz-}
if [ -z "$kernel" ] || [ -z "$(find "/lib/modules/$kver" -name 'virtio_blk.ko*' 2>/dev/null)" ]; then
    missing+=(linux-image-amd64)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "test-power-cut: missing Debian packages: ${missing[*]}" >&2
    echo "  apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

cargo build --release --locked --bin edge-agent
vm=$PWD/target/power-cut
mkdir -p "$vm"
cp target/release/edge-agent "$vm/edge-agent"
echo "power cuts; $(uptime | sed 's/.*load/load/')"
python3 scripts/power_cut.py --vm "$vm" --agent "$vm/edge-agent" --kernel "$kernel" "$@"
