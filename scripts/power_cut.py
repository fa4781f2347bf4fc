"""Real power cuts: edge-agent runs in a QEMU VM whose data disk is a file on this
machine, and the power is cut by killing QEMU (SIGKILL) at a random instant. What the
guest had not flushed from its page cache is lost; what it wrote to its disk survives.
Started by scripts/test-power-cut.sh, which checks the Debian packages, builds the agent
and this VM's initrd; see README.md, "Real power cuts".

Scenarios:
  replay  three installs of the `ota` cycle below run uncut while the kernel's
          dm-log-writes target records every write to the data disk; then every prefix
          of the record up to a flush or FUA (what a power cut at that instant could
          leave) is replayed onto a copy of the disk as it was before, mounted from a
          throw-away copy and checked as below (the method of CrashMonkey and xfstests'
          log-writes tests; --every N checks every Nth state). The replay runs on this
          machine when it can loop-mount (root), else in the VM through dm snapshots.
In the next two, each boot first checks what the previous cut left, then runs the next
run and is cut somewhere in it:
  ota     `edge-agent ota install` of a 2 MB, 200-file package from an HTTP server on this
          machine, in a cycle of three: 2.0.0 (commits), 3.0.0 (its health check fails:
          rolls back), 1.0.0 again (--force). The cut falls anywhere in the download,
          verification, extraction, fsyncs, switch, journal writes, commit or rollback.
          Check after the reboot, before and after `ota recover`: `current` points at a
          complete slot whose every file matches its manifest's SHA-256 (computed here,
          independently of the agent), the journal agrees with the slots, `ota status`
          answers, and no package is left behind unless an update awaits confirmation.
  outbox  batches of 200 QoS 1 messages queued with `edge-agent mqtt pub --no-wait` (it
          returns once they are written and fsynced: the batch is acknowledged), and
          every second batch `edge-agent outbox flush` to a mosquitto on this machine that
          is stopped and started at random. Check after the reboot: `outbox flush`, then
          every message of every acknowledged batch has reached the subscriber.

usage: power_cut.py --vm DIR --agent BIN --kernel VMLINUZ [--cuts N]
                   [--scenario replay|ota|outbox|all] [--every N] [--seed S]
"""

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Mosquitto, free_port  # noqa: E402

HOST_IP = "10.0.2.2"  # this machine, seen from QEMU's user network


def log(msg):
    print(f"[power-cut {time.strftime('%H:%M:%S')}] {msg}", flush=True)


GUEST = r'''#!/bin/bash
# Runs in the VM (chroot into this machine's file system, read-only, with the data disk
# at /tmp/data). Reads the plan, checks what the last cut left, runs the next scenario.
set -u
plan=$1
data=/tmp/data
say() { echo "PC: $*" > /dev/console; }
eval "$(python3 -c 'import json,sys,shlex; p=json.load(open(sys.argv[1])); [print(f"{k}={shlex.quote(str(v))}") for k,v in p.items()]' "$plan")"
export HOME=/tmp RUST_LOG=warn
mkdir -p $data
if ! mount -t ext4 /dev/vda $data; then say "CHECK-FAIL the data disk does not mount"; exit 1; fi
state=$data/state
case "$check" in
ota)
    out=$(PC_AGENT=$agent python3 "$repo/scripts/power_cut.py" --check-ota "$state" 2>&1)
    say "CHECK-BEFORE $out"
    if ! r=$("$agent" ota recover --state-dir "$state/ota" 2>&1); then say "CHECK-FAIL ota recover: $(echo $r | tr '\n' ' ')"; fi
    out=$(PC_AGENT=$agent python3 "$repo/scripts/power_cut.py" --check-ota "$state" --after-recover 2>&1)
    say "CHECK-AFTER $out"
    ;;
outbox)
    if r=$("$agent" outbox flush --config "$data/agent.toml" --timeout 120s 2>&1); then
        say "FLUSHED"
    else
        say "CHECK-FAIL outbox flush: $(echo $r | tr '\n' ' ' | cut -c1-300)"
    fi
    ;;
esac
sync
case "$scenario" in
record)
    # every write to the data disk is logged (dm-log-writes) while three installs run
    # uncut; then each prefix of the log up to a flush or FUA is replayed onto a copy of
    # the disk as it was before, and checked (through a throw-away snapshot), here or,
    # when the host can loop-mount, there
    umount $data
    size=$(blockdev --getsz /dev/vda)
    dmsetup --noudevsync create lw --table "0 $size log-writes /dev/vda /dev/vdb" && dmsetup mknodes
    mount -t ext4 /dev/mapper/lw $data || { say "CHECK-FAIL the logged disk does not mount"; exit 1; }
    dmsetup message lw 0 mark start
    say "SCENARIO-START"
    for i in 0 1 2; do
        eval "u=\$url$i d=\$sha$i v=\$version$i"
        "$agent" ota install "$u" --sha256 "$d" --version "$v" --yes --force --state-dir "$state/ota" >/dev/null 2>&1
        say "INSTALLED $v $?"
        dmsetup message lw 0 mark "installed-$v"
    done
    umount $data
    dmsetup --noudevsync remove lw
    say "SCENARIO-END 0"
    if [ "$replay_in" = guest ]; then
        PC_AGENT=$agent python3 "$repo/scripts/power_cut.py" --replay /dev/vdb --onto /dev/vdc --cow /dev/vdd \
            --every "$every" 2>&1 | while read -r l; do say "$l"; done
    fi
    ;;
ota)
    say "SCENARIO-START"
    r=$("$agent" ota install "$url" --sha256 "$sha256" --version "$version" --yes --force \
        --state-dir "$state/ota" 2>&1)
    say "SCENARIO-END $? $(echo "$r" | tail -2 | tr '\n' ' ' | cut -c1-200)"
    ;;
outbox)
    say "SCENARIO-START"
    for b in $(seq 1 $batches); do
        if "$agent" mqtt pub --config "$data/agent.toml" -t "cut/$cut" --count "$batch" --no-wait \
            "c$cut-b$b-\${n}" >/dev/null 2>&1; then
            say "ACKED c$cut-b$b"
        else
            say "PUB-FAILED c$cut-b$b"
        fi
        if [ $((b % 2)) = 0 ]; then
            "$agent" outbox flush --config "$data/agent.toml" --timeout 5s >/dev/null 2>&1 && say "FLUSH-OK $b"
        fi
    done
    say "SCENARIO-END 0"
    ;;
esac
sync
'''

INIT = r'''#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
while read -r m; do insmod /mods/$m 2>/dev/null || echo "insmod $m failed"; done < /order
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=none host /host
for d in proc sys dev; do mount --bind /$d /host/$d; done
mount -t tmpfs tmp /host/tmp
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
chroot /host /bin/bash @GUEST@ @PLAN@
echo "PC: GUEST-DONE"
poweroff -f
'''


def build_initrd(vm, kver):
    root = os.path.join(vm, "root")
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "mods", "dev", "proc", "sys", "host"):
        os.makedirs(os.path.join(root, d))
    shutil.copy("/bin/busybox", os.path.join(root, "bin"))
    order = []
    for m in ("virtio_pci", "virtio_blk", "virtio_net", "9pnet_virtio", "9p", "ext4", "dm-log-writes",
              "dm-snapshot"):
        deps = subprocess.run(["modprobe", "-S", kver, "--show-depends", m], check=True,
                              capture_output=True, text=True).stdout
        for line in deps.splitlines():
            parts = line.split()
            if parts and parts[0] == "insmod" and parts[1] not in order:
                order.append(parts[1])
    names = []
    for ko in order:
        name = os.path.basename(ko)
        for ext in (".xz", ".zst"):
            if name.endswith(ext):
                name = name[: -len(ext)]
        dst = os.path.join(root, "mods", name)
        if ko.endswith(".xz"):
            subprocess.run(f"xz -dc {ko} > {dst}", shell=True, check=True)
        elif ko.endswith(".zst"):
            subprocess.run(f"zstd -qdc {ko} > {dst}", shell=True, check=True)
        else:
            shutil.copy(ko, dst)
        names.append(name)
    with open(os.path.join(root, "order"), "w", encoding="utf-8") as f:
        f.write("\n".join(names) + "\n")
    guest = os.path.join(vm, "guest.sh")
    with open(guest, "w", encoding="utf-8") as f:
        f.write(GUEST)
    os.chmod(guest, 0o755)
    with open(os.path.join(root, "init"), "w", encoding="utf-8") as f:
        f.write(INIT.replace("@GUEST@", guest).replace("@PLAN@", os.path.join(vm, "plan.json")))
    os.chmod(os.path.join(root, "init"), 0o755)
    subprocess.run(f"cd {root} && find . | cpio -o -H newc 2>/dev/null | gzip -1 > ../initrd.gz",
                   shell=True, check=True)


# ---- the check of an OTA state folder (runs in the VM) ----

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def slot_problem(slot):
    """None when `slot` holds a manifest whose every component is there with its hash."""
    try:
        with open(os.path.join(slot, "manifest.json"), "rb") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        return f"no readable manifest in {slot}: {e}"
    comps = manifest.get("components") or []
    if not comps:
        return f"{slot}: the manifest lists no components"
    for c in comps:
        p = os.path.join(slot, c["path"])
        if not os.path.isfile(p) or os.path.islink(p):
            return f"{slot}: {c['path']} is missing"
        if sha256(p) != c["sha256"].lower():
            return f"{slot}: {c['path']} does not match its hash"
    return None


def check_ota(state, after_recover, agent):
    ota = os.path.join(state, "ota")
    cur = os.path.join(ota, "current")
    if not os.path.islink(cur):
        return "FAIL current is not a symlink"
    target = os.path.realpath(cur)
    p = slot_problem(target)
    if p:
        return "FAIL " + p
    with open(os.path.join(target, "manifest.json"), "rb") as f:
        version = json.load(f)["version"]
    r = subprocess.run([agent, "ota", "status", "--state-dir", ota], capture_output=True, text=True)
    if r.returncode != 0:
        return f"FAIL ota status: {r.stderr.strip()[:200]}"
    try:
        st = json.loads(r.stdout)
    except ValueError:
        return f"FAIL ota status is not JSON: {r.stdout[:200]}"
    phase = (st.get("journal") or {}).get("state")
    active = st.get("active")
    if os.path.basename(target) != active:
        return f"FAIL ota status says slot {active} is active, current points at {target}"
    if after_recover:
        committed = st.get("committed") or {}
        if phase == "committed":
            if committed.get("version") != version or committed.get("slot") != active:
                return f"FAIL committed {committed} but current holds {version} in {active}"
        elif phase == "switched-pending-confirm":
            if (st.get("journal") or {}).get("slot") != active:
                return f"FAIL pending confirmation of another slot: {st}"
        elif phase in ("failed", "rolled-back", None, "idle"):
            if committed and committed.get("slot") != active:
                return f"FAIL {phase} but the committed slot is not active: {st}"
        else:
            return f"FAIL left busy after recovery: {phase}"
        if phase != "switched-pending-confirm":
            d = os.path.join(ota, "downloads")
            left = [n for n in os.listdir(d) if n.endswith(".pkg") or n.endswith(".source")] \
                if os.path.isdir(d) else []
            if left:
                return f"FAIL {phase} but downloads/ holds {left}"
    return f"OK {version} {phase}"


# ---- dm-log-writes replay (runs in the VM) ----

LOG_FLUSH, LOG_FUA, LOG_DISCARD, LOG_MARK = 1, 2, 4, 8
LOG_MAGIC = 0x6A736677736872


def log_entries(logdev):
    """(flags, byte offset, data, or a mark's text, or a discard's length) of each entry of a dm-log-writes log, in order.
    Layout (drivers/md/dm-log-writes.c): a super block (magic, version, entries,
    sector size) in the first sector; then per entry one sector with its header
    (sector, sectors, flags, data length; a mark's text after it), followed by the
    written sectors unless it is a discard."""
    import struct
    with open(logdev, "rb") as f:
        magic, version, n, ss = struct.unpack("<QQQI", f.read(28))
        if magic != LOG_MAGIC or version != 1:
            raise SystemExit(f"{logdev} is not a dm-log-writes log")
        pos = ss
        for _ in range(n):
            f.seek(pos)
            head = f.read(ss)
            sector, nsec, flags, dlen = struct.unpack("<QQQQ", head[:32])
            pos += ss
            if flags & LOG_MARK:
                yield flags, sector * ss, head[32:32 + dlen].decode(errors="replace")
            elif flags & LOG_DISCARD:
                yield flags, sector * ss, nsec * ss
            else:
                f.seek(pos)
                yield flags, sector * ss, f.read(nsec * ss)
                pos += nsec * ss


class DmSnapshot:
    """A crash state mounted through a throw-away dm snapshot of `onto` (in the VM)."""

    def __init__(self, onto, cow):
        self.onto, self.cow = onto, cow
        self.size = int(subprocess.run(["blockdev", "--getsz", onto], check=True, capture_output=True,
                                       text=True).stdout)

    def mount(self, mnt):
        subprocess.run(["dmsetup", "--noudevsync", "create", "snap", "--table",
                        f"0 {self.size} snapshot {self.onto} {self.cow} N 8"], check=True)
        subprocess.run(["dmsetup", "mknodes"], check=True)
        return subprocess.run(["mount", "-t", "ext4", "/dev/mapper/snap", mnt], capture_output=True, text=True)

    def release(self):
        subprocess.run(["dmsetup", "--noudevsync", "remove", "snap"], check=True)


class ScratchCopy:
    """A crash state mounted from a sparse copy of `onto` through a loop device (on this
    machine: the same checks, at native speed)."""

    def __init__(self, onto, scratch):
        self.onto, self.scratch = onto, scratch

    def mount(self, mnt):
        subprocess.run(["cp", "--sparse=always", self.onto, self.scratch], check=True)
        return subprocess.run(["mount", "-t", "ext4", "-o", "loop", self.scratch, mnt],
                              capture_output=True, text=True)

    def release(self):
        pass


def replay(logdev, onto, cow, every, agent, on="guest", mnt="/tmp/replay", say=None):
    """Replays `logdev` onto `onto` entry by entry; at each flush or FUA after the "start"
    mark, checks the disk as a power cut there would leave it, mounted from a throw-away
    snapshot (in the VM) or copy (here), which takes the writes of mounting and
    recovering, so the replay goes on from the untouched disk."""
    say = say or (lambda line: print(line, flush=True))
    state_of = DmSnapshot(onto, cow) if on == "guest" else ScratchCopy(onto, cow)
    fd = os.open(onto, os.O_RDWR)
    started, points, checked, bad = False, 0, 0, 0
    marks = []
    os.makedirs(mnt, exist_ok=True)
    t0 = time.monotonic()
    for flags, offset, data in log_entries(logdev):
        if flags & LOG_MARK:
            marks.append(data)
            started = started or data == "start"
            continue
        if flags & LOG_DISCARD:
            os.pwrite(fd, bytes(data), offset)
        elif data:
            os.pwrite(fd, data, offset)
        if not (started and flags & (LOG_FLUSH | LOG_FUA)):
            continue
        points += 1
        if points % every:
            continue
        os.fsync(fd)
        where = f"crash state {points} (after mark {marks[-1] if marks else '-'})"
        try:
            r = state_of.mount(mnt)
            if r.returncode != 0:
                problem = f"FAIL does not mount: {r.stderr.strip()}"
            else:
                before = check_ota(os.path.join(mnt, "state"), False, agent)
                rec = subprocess.run([agent, "ota", "recover", "--state-dir", os.path.join(mnt, "state", "ota")],
                                     capture_output=True, text=True)
                after = check_ota(os.path.join(mnt, "state"), True, agent)
                problem = None
                if not before.startswith("OK"):
                    problem = f"before recovery: {before}"
                elif rec.returncode != 0:
                    problem = f"ota recover failed: {rec.stderr.strip()[:200]}"
                elif not after.startswith("OK"):
                    problem = f"after recovery: {after}"
                subprocess.run(["umount", mnt], check=True)
        finally:
            state_of.release()
        checked += 1
        if problem:
            bad += 1
            say(f"REPLAY-BAD {where}: {problem}")
        elif checked % 10 == 0:
            say(f"REPLAY-PROGRESS {checked} states checked, {bad} bad, {time.monotonic() - t0:.0f} s")
    os.close(fd)
    say(f"REPLAY-DONE points={points} checked={checked} bad={bad} s={time.monotonic() - t0:.0f}")


def can_loop_mount(vm):
    """Whether this machine lets us mount an ext4 image through a loop device (root, and
    loop devices in this container or VM)."""
    if os.geteuid() != 0:
        return False
    img, mnt = os.path.join(vm, "probe.img"), os.path.join(vm, "probe")
    try:
        subprocess.run(["truncate", "-s", "8M", img], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", img], check=True)
        os.makedirs(mnt, exist_ok=True)
        if subprocess.run(["mount", "-t", "ext4", "-o", "loop", img, mnt], capture_output=True).returncode:
            return False
        subprocess.run(["umount", mnt], check=True)
        return True
    finally:
        if os.path.exists(img):
            os.remove(img)


# ---- the host side ----

class Subscriber:
    """mosquitto_sub on the test broker, with a persistent session: every payload it got."""

    def __init__(self, port):
        self.port = port
        self.proc = None
        self.got = set()
        self.lock = threading.Lock()

    def start(self):
        self.proc = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.port), "-q", "1",
                                      "-c", "-i", "power-cut-sub", "-t", "cut/#"],
                                     stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self.read, args=(self.proc,), daemon=True).start()

    def read(self, proc):
        for line in proc.stdout:
            with self.lock:
                self.got.add(line.strip())

    def has(self, msgs):
        with self.lock:
            return [m for m in msgs if m not in self.got]


def boot(vm, kernel, disk, accel, on_line, timeout=300, extra=()):
    """Boots the VM; `on_line(line, proc)` sees each of the guest script's console lines.
    Returns them. A boot that hangs before the script says anything (the emulated CPU
    stalls now and then on a loaded machine) is made again, at most twice."""
    for attempt in range(3):
        lines = boot_once(vm, kernel, disk, accel, on_line, timeout, extra)
        if lines:
            return lines
        log(f"the VM said nothing within {timeout} s; booting again")
    return []


def boot_once(vm, kernel, disk, accel, on_line, timeout, extra=()):
    cpu = "host" if accel == "kvm" else "max"
    cmd = ["qemu-system-x86_64", "-accel", accel, "-cpu", cpu, "-m", "1024", "-smp", "1", "-nographic",
           "-no-reboot", "-kernel", kernel, "-initrd", os.path.join(vm, "initrd.gz"),
           "-append", "console=ttyS0 quiet panic=-1 cryptomgr.notests nowatchdog",
           "-drive", f"file={disk},format=raw,if=virtio,cache=writeback",
           *[a for d in extra for a in ("-drive", f"file={d},format=raw,if=virtio,cache=unsafe")],
           "-nic", "user,model=virtio-net-pci", "-global", "virtio-net-pci.romfile=",
           "-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
    lines = []
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    console = open(os.path.join(vm, "console.log"), "a", encoding="utf-8")
    console.write(f"==== boot at {time.strftime('%H:%M:%S')}\n")
    try:
        for line in proc.stdout:
            line = line.rstrip()
            console.write(line + "\n")
            if "PC: " in line:
                line = line[line.index("PC: ") + 4:]
                lines.append(line)
                on_line(line, proc)
    finally:
        timer.cancel()
        proc.wait()
        console.close()
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-ota")
    ap.add_argument("--after-recover", action="store_true")
    ap.add_argument("--vm")
    ap.add_argument("--agent")
    ap.add_argument("--kernel")
    ap.add_argument("--cuts", type=int, default=100)
    ap.add_argument("--scenario", default="all", choices=["ota", "outbox", "replay", "all"])
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument("--replay")
    ap.add_argument("--onto")
    ap.add_argument("--cow")
    ap.add_argument("--every", type=int, default=1, help="check every Nth crash state of the replay")
    args = ap.parse_args()
    if args.replay:
        replay(args.replay, args.onto, args.cow, args.every, os.environ["PC_AGENT"])
        return
    if args.check_ota:
        agent = os.environ.get("PC_AGENT") or "edge-agent"
        print(check_ota(args.check_ota, args.after_recover, agent))
        return
    run(args)


def run(args):
    vm = os.path.abspath(args.vm)
    kernel = args.kernel
    kver = os.path.basename(kernel).removeprefix("vmlinuz-")
    accel = "kvm" if os.access("/dev/kvm", os.W_OK) and re.search(
        r"\b(vmx|svm)\b", open("/proc/cpuinfo", encoding="utf-8").read()) else "tcg"
    build_initrd(vm, kver)
    rng = random.Random(args.seed)
    agent = os.path.abspath(args.agent)
    results = {"ota": {"cuts": 0, "killed": 0, "ok": 0, "bad": [], "phases": {}, "versions": {}},
               "outbox": {"cuts": 0, "killed": 0, "ok": 0, "bad": [], "acked": 0, "messages": 0},
               "replay": {"states": 0, "points": 0, "bad": [], "seconds": 0}}
    t_start = time.monotonic()
    scenarios = ["replay", "ota", "outbox"] if args.scenario == "all" else [args.scenario]
    runners = {"ota": run_ota, "outbox": run_outbox, "replay": run_replay}
    for scenario in scenarios:
        runners[scenario](args, vm, kernel, accel, agent, rng, results[scenario])
    results["minutes"] = round((time.monotonic() - t_start) / 60, 1)
    results["accel"] = accel
    with open(os.path.join(vm, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    bad = sum(len(results[s]["bad"]) for s in ("ota", "outbox", "replay"))
    cuts = sum(results[s]["cuts"] for s in ("ota", "outbox"))
    log(f"{cuts} power cuts and {results['replay']['states']} replayed crash states checked, {bad} bad "
        f"states, {results['minutes']} min ({accel})")
    sys.exit(1 if bad else 0)


def make_disk(vm, name, files):
    """A 256 MB ext4 image holding `files` (a folder) as its root."""
    disk = os.path.join(vm, name)
    if os.path.exists(disk):
        os.remove(disk)
    subprocess.run(["truncate", "-s", "256M", disk], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", files, disk], check=True)
    return disk


def arm_cut(proc, delay, state):
    """Cuts the power (kills QEMU) `delay` seconds from now; `state["killed"]` says
    whether it happened, `state["timer"]` cancels it."""
    def cut():
        state["killed"] = True
        proc.kill()
    state["timer"] = threading.Timer(delay, cut)
    state["timer"].daemon = True
    state["timer"].start()


def write_plan(vm, plan):
    tmp = os.path.join(vm, "plan.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(plan, f)
    os.replace(tmp, os.path.join(vm, "plan.json"))


def pack(agent, vm, version, health, nfiles=200, size=10_000):
    src = os.path.join(vm, f"src-{version}")
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(os.path.join(src, "m"))
    r = random.Random(version)
    for i in range(nfiles):
        with open(os.path.join(src, "m", f"{i:03}.bin"), "wb") as f:
            f.write(r.randbytes(size))
    with open(os.path.join(src, "detect.toml"), "w", encoding="utf-8") as f:
        f.write(f"# {version}\n")
    out = os.path.join(vm, "www")
    os.makedirs(out, exist_ok=True)
    cmd = [agent, "ota", "pack", src, "--version", version, "--out", os.path.join(out, version)]
    if health:
        cmd += ["--health-check", health]
    p = subprocess.run(cmd, check=True, capture_output=True, text=True)
    pkg = [os.path.join(out, version, n) for n in os.listdir(os.path.join(out, version)) if n.endswith(".tar.gz")]
    if len(pkg) != 1:
        raise SystemExit(f"power-cut: ota pack made {pkg}: {p.stdout} {p.stderr}")
    return pkg[0], sha256(pkg[0])


VERSIONS = ["2.0.0", "3.0.0", "1.0.0"]
BATCH = 200  # messages per `mqtt pub --no-wait` of the outbox scenario


def ota_setup(vm, agent, name):
    """The three packages (2.0.0; 3.0.0 whose health check fails; 1.0.0), an HTTP server
    for them, and a disk with 1.0.0 installed. Returns (packages, port, server, disk)."""
    pkgs = [pack(agent, vm, "2.0.0", None), pack(agent, vm, "3.0.0", "/bin/false"),
            pack(agent, vm, "1.0.0", None)]
    port = free_port("0.0.0.0")
    http = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "0.0.0.0",
                             "--directory", os.path.join(vm, "www")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seed = os.path.join(vm, f"seed-{name}")
    shutil.rmtree(seed, ignore_errors=True)
    os.makedirs(os.path.join(seed, "state"))
    r = subprocess.run([agent, "ota", "install", pkgs[2][0], "--yes", "--state-dir",
                        os.path.join(seed, "state", "ota")], capture_output=True, text=True)
    if r.returncode != 0:
        http.kill()
        raise SystemExit(f"power-cut: the first install failed: {r.stderr}")
    return pkgs, port, http, make_disk(vm, f"data-{name}.img", seed)


def package_url(vm, port, pkg):
    return f"http://{HOST_IP}:{port}/{os.path.relpath(pkg, os.path.join(vm, 'www'))}"


def run_replay(args, vm, kernel, accel, agent, rng, res):
    log("scenario replay: three installs recorded with dm-log-writes, every crash state replayed")
    replay_in = "host" if can_loop_mount(vm) else "guest"
    log(f"the crash states are checked {'on this machine' if replay_in == 'host' else 'in the VM'}"
        f"{'' if replay_in == 'host' else ' (this machine cannot loop-mount: slower)'}")
    pkgs, port, http, disk = ota_setup(vm, agent, "replay")
    try:
        onto = os.path.join(vm, "replay-onto.img")
        subprocess.run(["cp", "--sparse=always", disk, onto], check=True)
        logdev, cow = os.path.join(vm, "replay-log.img"), os.path.join(vm, "replay-cow.img")
        for f, size in ((logdev, "2G"), (cow, "256M")):
            if os.path.exists(f):
                os.remove(f)
            subprocess.run(["truncate", "-s", size, f], check=True)
        plan = {"repo": REPO, "agent": agent, "check": "none", "scenario": "record", "cut": 0,
                "every": args.every, "replay_in": replay_in, "url": "", "sha256": "", "version": "",
                "batches": 0}
        for i, (pkg, digest) in enumerate(pkgs):
            plan.update({f"url{i}": package_url(vm, port, pkg), f"sha{i}": digest, f"version{i}": VERSIONS[i]})
        write_plan(vm, plan)

        def on_line(line, proc):
            if line.startswith(("REPLAY-", "INSTALLED", "CHECK-FAIL")):
                log(line)
        lines = boot(vm, kernel, disk, accel, on_line, timeout=4 * 3600, extra=(logdev, onto, cow))
        installed = [l for l in lines if l.startswith("INSTALLED")]
        res["installs"] = installed
        res["replayed_in"] = replay_in
        if len(installed) != 3 or "SCENARIO-END" not in " ".join(lines):
            res["bad"].append(f"the recorded run did not complete: {lines[-5:]}")
            return
        if replay_in == "host":
            lines = [l for l in lines if l.startswith("CHECK-FAIL")]

            def say(line):
                lines.append(line)
                if not line.startswith("REPLAY-PROGRESS") or line.split()[1].endswith("00"):
                    log(line)
            # `ota recover` resumes an interrupted download from the URL in the journal,
            # which names this machine as the VM sees it: give that address to loopback
            # for the replay (the HTTP server listens on every address).
            added = subprocess.run(["ip", "addr", "add", f"{HOST_IP}/32", "dev", "lo"],
                                   capture_output=True).returncode == 0
            try:
                replay(logdev, onto, cow, args.every, agent, on="host", mnt=os.path.join(vm, "replay-mnt"),
                       say=say)
            finally:
                if added:
                    subprocess.run(["ip", "addr", "del", f"{HOST_IP}/32", "dev", "lo"], check=False)
    finally:
        http.kill()
    res["bad"] += [l for l in lines if l.startswith(("REPLAY-BAD", "CHECK-FAIL"))]
    done = next((l for l in lines if l.startswith("REPLAY-DONE")), None)
    if not done:
        res["bad"].append(f"the replay did not finish: {lines[-5:]}")
        return
    kv = dict(x.split("=") for x in done.split()[1:])
    res["points"], res["states"], res["seconds"] = int(kv["points"]), int(kv["checked"]), int(kv["s"])


def run_ota(args, vm, kernel, accel, agent, rng, res):
    log("scenario ota: packages and the first disk")
    pkgs, port, http, disk = ota_setup(vm, agent, "ota")
    versions = VERSIONS
    try:

        def plan_for(i, check):
            pkg, digest = pkgs[i % 3]
            return {"repo": REPO, "agent": agent, "check": check, "scenario": "ota", "cut": i,
                    "url": package_url(vm, port, pkg), "sha256": digest,
                    "version": versions[i % 3], "batches": 0}

        # A whole install, not cut, measures how long one takes (the cut falls within).
        durations = []
        for i in range(3):
            write_plan(vm, plan_for(i, "ota" if i else "none"))
            marks = {}
            lines = boot(vm, kernel, disk, accel,
                         lambda line, p: marks.setdefault(line.split()[0], time.monotonic()))
            if "SCENARIO-END" not in marks:
                raise SystemExit(f"power-cut: an uncut install did not finish: {lines}")
            durations.append(marks["SCENARIO-END"] - marks["SCENARIO-START"])
            log(f"uncut install of {versions[i % 3]}: {durations[-1]:.1f} s; {lines[-2:]}")
        span = max(durations) * 1.1
        for k in range(args.cuts):
            i = k + 3
            write_plan(vm, plan_for(i, "ota"))
            delay = rng.uniform(0, span)
            state = {"killed": False}

            def on_line(line, proc, delay=delay, state=state):
                if line.startswith("SCENARIO-START"):
                    arm_cut(proc, delay, state)
            lines = boot(vm, kernel, disk, accel, on_line)
            if "timer" in state:
                state["timer"].cancel()
            judge_ota(lines, k, res, first=(k == 0))
            res["killed"] += int(state["killed"])
            log(f"boot {k + 1}/{args.cuts}: found {lines[1] if len(lines) > 1 else lines}; installed "
                f"{versions[i % 3]}, power cut at {delay:.1f} s"
                f"{'' if state['killed'] else ' (after the install had ended)'}")
        # the last cut's check
        write_plan(vm, dict(plan_for(args.cuts + 3, "ota"), scenario="none"))
        judge_ota(boot(vm, kernel, disk, accel, lambda line, p: None), args.cuts, res, first=False)
    finally:
        http.kill()


def judge_ota(lines, k, res, first):
    """Reads the check lines a boot printed about the previous cut."""
    if first:
        return
    res["cuts"] += 1
    before = next((l for l in lines if l.startswith("CHECK-BEFORE")), None)
    after = next((l for l in lines if l.startswith("CHECK-AFTER")), None)
    fails = [l for l in lines if l.startswith("CHECK-FAIL")]
    if fails or not before or not after or " OK " not in f" {before} " or " OK " not in f" {after} ":
        res["bad"].append({"cut": k, "lines": lines[:6]})
        log(f"BAD STATE after cut {k}: {lines[:6]}")
        return
    res["ok"] += 1
    v, phase = after.split()[2:4]
    res["versions"][v] = res["versions"].get(v, 0) + 1
    res["phases"][phase] = res["phases"].get(phase, 0) + 1


def run_outbox(args, vm, kernel, accel, agent, rng, res):
    log("scenario outbox")
    port = free_port("0.0.0.0")
    broker = Mosquitto(os.path.join(vm, "mosquitto"), port, host="0.0.0.0")
    broker.start()
    sub = Subscriber(port)
    sub.start()
    seed = os.path.join(vm, "seed-outbox")
    shutil.rmtree(seed, ignore_errors=True)
    os.makedirs(os.path.join(seed, "state"))
    with open(os.path.join(seed, "agent.toml"), "w", encoding="utf-8") as f:
        f.write(f'state_dir = "/tmp/data/state"\n[device]\nproduct_key = "pk"\ndevice_name = "cut"\n'
                f'[mqtt]\nhost = "{HOST_IP}"\nport = {port}\n[mqtt.reconnect]\ninitial_delay = "200ms"\n'
                'max_delay = "1s"\n')
    disk = make_disk(vm, "data-outbox.img", seed)
    acked = []
    flaps = {"stop": False}

    def flap():
        while not flaps["stop"]:
            time.sleep(rng.uniform(2, 8))
            if flaps["stop"]:
                break
            broker.stop()
            time.sleep(rng.uniform(1, 4))
            broker.start()
    try:
        for k in range(args.cuts + 1):
            last = k == args.cuts
            write_plan(vm, {"repo": REPO, "agent": agent, "check": "outbox" if k else "none",
                            "scenario": "none" if last else "outbox", "cut": k, "batches": 60,
                            "batch": BATCH,
                            "url": "", "sha256": "", "version": ""})
            delay = rng.uniform(0, 40)
            state = {}
            if not broker.up():
                broker.start()
            flaps["stop"] = False

            def on_line(line, proc, delay=delay, state=state):
                if line.startswith("ACKED "):
                    acked.append(line.split()[1])
                if line.startswith("FLUSHED") or line.startswith("CHECK-FAIL"):
                    state["flushed"] = line
                    # what was acknowledged before this boot: all of it must arrive
                    state["acked_before"] = len(acked)
                if line.startswith("SCENARIO-START") and not last:
                    threading.Thread(target=flap, daemon=True).start()
                    arm_cut(proc, delay, state)
            lines = boot(vm, kernel, disk, accel, on_line)
            flaps["stop"] = True
            if "timer" in state:
                state["timer"].cancel()
            res["killed"] += int(state.get("killed", False))
            if k == 0:
                continue
            res["cuts"] += 1
            if state.get("flushed") != "FLUSHED":
                res["bad"].append({"cut": k - 1, "lines": lines[:6]})
                log(f"BAD STATE after cut {k - 1}: {lines[:6]}")
                continue
            # every acknowledged message so far has reached the subscriber
            want = [f"{b}-{n}" for b in acked[:state["acked_before"]] for n in range(1, BATCH + 1)]
            end = time.monotonic() + 30
            missing = sub.has(want)
            while missing and time.monotonic() < end:
                time.sleep(0.2)
                missing = sub.has(want)
            if missing:
                res["bad"].append({"cut": k - 1, "missing": len(missing), "first": missing[:5]})
                log(f"BAD STATE after cut {k - 1}: {len(missing)} acknowledged messages never arrived, "
                    f"e.g. {missing[:3]}")
            else:
                res["ok"] += 1
            res["acked"] = len(acked)
            res["messages"] = len(want)
            log(f"cut {k}/{args.cuts}: {len(acked)} batches acknowledged so far, all delivered"
                if not missing else f"cut {k}: {len(missing)} missing")
    finally:
        flaps["stop"] = True
        broker.stop()
        if sub.proc:
            sub.proc.kill()


if __name__ == "__main__":
    main()
