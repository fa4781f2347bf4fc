#!/usr/bin/env bash
# V4L2 capture tests against a real V4L2 driver: boots a small VM (QEMU) with Debian's
# kernel, loads its vivid test camera, mounts this machine's file system read-only and
# runs tests/v4l2_camera.rs (cargo feature v4l2) in it against /dev/video0.
#
# Needs (Debian packages): qemu-system-x86 linux-image-amd64 busybox-static libclang-dev.
# The kernel package is only read (vmlinuz and the vivid and 9p modules); the machine
# keeps running its own kernel. Uses KVM when /dev/kvm works, else plain emulation
# (slower: about a minute). An argument filters the tests by name.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q "statically linked" || missing+=(busybox-static)
kernel=$(ls -1 /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -1 || true)
kver=${kernel#/boot/vmlinuz-}
if [ -z "$kernel" ] || [ -z "$(find "/lib/modules/$kver" -name 'vivid.ko*' 2>/dev/null)" ]; then
    missing+=(linux-image-amd64)
fi
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
command -v file >/dev/null || missing+=(file)
if [ ${#missing[@]} -gt 0 ]; then
    echo "test-v4l2: missing Debian packages: ${missing[*]}" >&2
    echo "  apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "== build the V4L2 tests (--features v4l2)"
cargo clippy --all-targets --features v4l2 -- -D warnings
testbin=$(cargo test --features v4l2 --test v4l2_camera --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "v4l2_camera":
        print(m["executable"])')
[ -x "$testbin" ] || { echo "test-v4l2: the test binary was not built" >&2; exit 1; }

echo "== VM: kernel $kver with vivid"
vm=$repo/target/v4l2-vm
rm -rf "$vm" && mkdir -p "$vm/root"/{bin,mods,dev,proc,sys,host}
cp /bin/busybox "$vm/root/bin/"
for m in virtio_pci 9pnet_virtio 9p vivid; do
    modprobe -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' > "$vm/order"
while read -r ko; do
    name=$(basename "$ko"); name=${name%.xz}; name=${name%.zst}
    case $ko in
        *.xz) xz -dc "$ko" > "$vm/root/mods/$name" ;;
        *.zst) zstd -qdc "$ko" > "$vm/root/mods/$name" ;;
        *) cp "$ko" "$vm/root/mods/$name" ;;
    esac
    echo "$name"
done < "$vm/order" > "$vm/root/order"
cat > "$vm/root/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
while read -r m; do insmod /mods/\$m || echo "insmod \$m failed"; done < /order
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 host /host
for d in proc sys dev; do mount --bind /\$d /host/\$d; done
mount -t tmpfs tmp /host/tmp
mount -t tmpfs shm /host/dev/shm 2>/dev/null || true
ip link set lo up; ip link set lo multicast on
ls /dev/video* >/dev/console
chroot /host /bin/sh -c 'cd $repo && export HOME=/tmp RUST_BACKTRACE=1 EDGE_AGENT_V4L2_DEVICE=/dev/video0 && $testbin --test-threads 1 ${1:-}'
echo "V4L2-TESTS-EXIT=\$?"
poweroff -f
EOF
chmod +x "$vm/root/init"
(cd "$vm/root" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$vm/initrd.gz")

# The test's Python wheels (numpy, onnxruntime) pick vector instructions at run time;
# the emulated CPU offers them with "max".
accel=tcg cpu=max
if [ -w /dev/kvm ] && grep -qE 'vmx|svm' /proc/cpuinfo; then accel=kvm cpu=host; fi
echo "== boot ($accel)"
timeout 900 qemu-system-x86_64 -accel "$accel" -cpu "$cpu" -m 2048 -smp 2 -nographic -no-reboot \
    -kernel "$kernel" -initrd "$vm/initrd.gz" \
    -append "console=ttyS0 quiet panic=-1" \
    -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
    2>&1 | tee "$vm/console.log" | grep -v '^\s*$' || true
code=$(sed -n 's/.*V4L2-TESTS-EXIT=\([0-9]*\).*/\1/p' "$vm/console.log" | tail -1)
if [ "$code" != 0 ]; then
    echo "test-v4l2: the tests in the VM failed (exit ${code:-none}); console: $vm/console.log" >&2
    exit 1
fi
echo "test-v4l2: all V4L2 tests passed against vivid on $kver"
