"""The soak run: edge-agent (a release build, as a process) under a robot's load for an
hour, with the broker restarted every ten minutes. Started by scripts/soak.sh, which
installs what it needs and builds the agent; see README.md, "Soak".

Load, all on one ROS domain restricted to loopback, from Cyclone DDS 0.10 (the DDS of
ROS 2 Humble and Jazzy):
  - mixed telemetry at --rate messages per second over five topics (Imu 40 %, Odometry
    25 %, JointState 20 %, BatteryState 10 %, String 5 %), bridged to MQTT at QoS 1
    through the outbox; every message carries its sequence number;
  - a 640x480 rgb8 camera topic at 10 Hz (its own process), bridged as JPEG once a
    second at QoS 0 and used by detection;
  - a detection request a second (edge_agent_msgs/msg/DetectionRequest), answered by a
    test cloud detector on the broker, or by the local model while the broker is down;
  - mosquitto (persistent, so a restart keeps what it acknowledged) stopped every
    --restart-every minutes for --outage seconds.

Every 10 s it records the agent's RSS, anonymous RSS, open descriptors, threads, CPU
and outbox disk use (CSV). At the end it stops the load, waits until every accepted
message has arrived, and reports: messages lost (a sequence number never received),
duplicates, detection outcomes, ERROR and WARN lines of the agent, and the growth of RSS
and descriptors from minute 5 to the end. With matplotlib it draws the CSV to a PNG.

usage: soak.py --agent BIN --out DIR [--minutes 60] [--rate 1000] [--restart-every 10]
               [--outage 15] [--domain N] [--no-detect] [--drain S] [--png FILE]
"""

import argparse
import csv
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "py"))

from harness import Mosquitto, claim_domain, free_port, wait_until  # noqa: E402

CYCLONE_LOOPBACK = ('<CycloneDDS><Domain><General><Interfaces><NetworkInterface name="lo" '
                    'multicast="true"/></Interfaces><AllowMulticast>true</AllowMulticast>'
                    '</General></Domain></CycloneDDS>')
os.environ["CYCLONEDDS_URI"] = CYCLONE_LOOPBACK

# name, ROS type, share of the telemetry rate
TELEMETRY = [
    ("imu", "sensor_msgs/msg/Imu", 0.40),
    ("odom", "nav_msgs/msg/Odometry", 0.25),
    ("joints", "sensor_msgs/msg/JointState", 0.20),
    ("battery", "sensor_msgs/msg/BatteryState", 0.10),
    ("status", "std_msgs/msg/String", 0.05),
]
PK, DEVICE = "soak-pk", "soak-robot"
CLOUD_REQ = f"/{PK}/{DEVICE}/user/detect/request"
CLOUD_RESP = f"/{PK}/{DEVICE}/user/detect/response"
CAMERA_TOPIC = "/camera/color/image_raw"
SAMPLE_EVERY = 10.0


def log(msg):
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def camera_process(domain, stop):
    """Publishes a 640x480 rgb8 image at 10 Hz until `stop` is set (its own process: the
    Python serializer takes about 40 ms a frame)."""
    os.environ["CYCLONEDDS_URI"] = CYCLONE_LOOPBACK
    import ros_peer
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.pub import DataWriter
    from cyclonedds.topic import Topic
    types = ros_peer.Types([os.path.join(REPO, "interfaces")], "jazzy")
    dp = DomainParticipant(domain)
    qos = ros_peer.make_qos({"reliability": "best-effort", "depth": 1})
    cls = types.idl("sensor_msgs/msg/Image")
    writer = DataWriter(dp, Topic(dp, ros_peer.dds_topic(CAMERA_TOPIC), cls, qos=qos), qos=qos)
    msg = types.make("sensor_msgs/msg/Image", {"height": 480, "width": 640, "encoding": "rgb8",
                                                "step": 1920,
                                                "header": {"frame_id": "camera_color_optical_frame"}})
    # a red disc on green leaves: something for the model to look at
    frame = bytearray(640 * 480 * 3)
    for y in range(480):
        row = bytearray(b"\x30\x90\x30" * 640)
        for x in range(max(0, 320 - 60), min(640, 320 + 60)):
            if (x - 320) ** 2 + (y - 240) ** 2 < 3600:
                row[3 * x:3 * x + 3] = b"\xd0\x20\x20"
        frame[y * 1920:(y + 1) * 1920] = row
    msg.data = bytes(frame)
    n = 0
    start = time.monotonic()
    while not stop.is_set():
        now = time.time()
        msg.header.stamp.sec = int(now)
        msg.header.stamp.nanosec = int((now % 1) * 1e9)
        writer.write(msg)
        n += 1
        delay = start + n * 0.1 - time.monotonic()
        if delay > 0:
            stop.wait(delay)


class Load:
    """Telemetry publishers, detection requests, the MQTT subscriber and the cloud."""

    def __init__(self, domain, port, rate):
        import ros_peer
        from cyclonedds.domain import DomainParticipant
        from cyclonedds.core import Policy, Qos
        from cyclonedds.pub import DataWriter
        from cyclonedds.sub import DataReader
        from cyclonedds.topic import Topic
        self.rp = ros_peer
        self.types = ros_peer.Types([os.path.join(REPO, "interfaces")], "jazzy")
        self.dp = DomainParticipant(domain)
        self.rate = rate
        self.lock = threading.Lock()
        self.published = {name: 0 for name, _, _ in TELEMETRY}
        self.received = {name: set() for name, _, _ in TELEMETRY}
        self.duplicates = 0
        self.blocked = 0
        self.stop_flag = threading.Event()
        # writers keep every sample until the agent has it: a slow agent slows the
        # publisher (visible as a lower published count), it does not drop samples
        keep_all = Qos(Policy.Reliability.Reliable(max_blocking_time=10_000_000_000),
                       Policy.Durability.Volatile, Policy.History.KeepAll)
        self.writers = {}
        self.matched = {}
        for name, tname, _ in TELEMETRY:
            m = ros_peer.Matched()
            topic = Topic(self.dp, ros_peer.dds_topic(f"/soak/{name}"), self.types.idl(tname), qos=keep_all)
            msg = self.types.make(tname, {"name": ["shoulder", "elbow", "wrist"],
                                          "position": [0.1, 0.2, 0.3]} if name == "joints" else {})
            self.writers[name] = (DataWriter(self.dp, topic, qos=keep_all, listener=m), msg)
            self.matched[name] = m
        # detection
        rel = ros_peer.make_qos({"depth": 10})
        self.req_writer = DataWriter(self.dp, Topic(self.dp, "rt/edge_agent/detect/request",
                                                    self.types.idl("edge_agent_msgs/msg/DetectionRequest"),
                                                    qos=rel), qos=rel)
        st_qos = ros_peer.make_qos({"durability": "transient-local", "depth": 100})
        self.status_reader = DataReader(self.dp, Topic(self.dp, "rt/edge_agent/detect/status",
                                                       self.types.idl("edge_agent_msgs/msg/DetectionStatus"),
                                                       qos=st_qos), qos=st_qos)
        self.detect_sent = 0
        self.detect_outcome = {}  # request id -> "cloud" | "local" | "error: ..."
        self.detect_errors = {}
        # MQTT
        import paho.mqtt.client as mqtt
        self.mqtt = mqtt
        self.sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-subscriber",
                               clean_session=False)
        self.sub.reconnect_delay_set(1, 2)
        self.sub.on_connect = lambda c, u, f, rc, p: c.subscribe("soak/#", qos=1)
        self.sub.on_message = self.on_telemetry
        self.sub.connect("127.0.0.1", port, keepalive=30)
        self.sub.loop_start()
        self.cloud = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-cloud")
        self.cloud.reconnect_delay_set(1, 2)
        self.cloud.on_connect = lambda c, u, f, rc, p: c.subscribe(CLOUD_REQ, qos=1)
        self.cloud.on_message = self.on_cloud_request
        self.cloud.connect("127.0.0.1", port, keepalive=30)
        self.cloud.loop_start()
        self.cloud_answered = 0

    def on_telemetry(self, client, userdata, m):
        name = m.topic.rsplit("/", 1)[-1]
        v = json.loads(m.payload)
        seq = int(v["data"] if name == "status" else v["header"]["frame_id"])
        with self.lock:
            got = self.received[name]
            if seq in got:
                self.duplicates += 1
            got.add(seq)

    def on_cloud_request(self, client, userdata, m):
        req = json.loads(m.payload)
        w, h = req["image"]["width"], req["image"]["height"]
        answer = {"id": req["id"], "model_version": "cloud-soak",
                  "detections": [{"class": "apple", "score": 0.9, "box": [w / 4, h / 4, w / 2, h / 2]}]}
        client.publish(CLOUD_RESP, json.dumps(answer), qos=1)
        self.cloud_answered += 1

    def wait_matched(self, timeout):
        wait_until(lambda: all(m.count > 0 for m in self.matched.values()), timeout,
                   "soak: the agent did not subscribe to every telemetry topic")

    def publish_loop(self):
        start = time.monotonic()
        while not self.stop_flag.is_set():
            elapsed = time.monotonic() - start
            for name, _, share in TELEMETRY:
                due = int(elapsed * self.rate * share)
                writer, msg = self.writers[name]
                while self.published[name] < due and not self.stop_flag.is_set():
                    seq = self.published[name]
                    if name == "status":
                        msg.data = str(seq)
                    else:
                        msg.header.frame_id = str(seq)
                    try:
                        writer.write(msg)
                    except Exception:  # blocked 10 s on an agent that does not read
                        self.blocked += 1
                        continue
                    self.published[name] = seq + 1
            time.sleep(0.002)

    def detect_loop(self):
        n = 0
        start = time.monotonic()
        while not self.stop_flag.is_set():
            rid = f"soak-{n}"
            self.req_writer.write(self.types.make("edge_agent_msgs/msg/DetectionRequest",
                                                  {"request_id": rid, "scene": "day"}))
            self.detect_sent = n + 1
            n += 1
            self.stop_flag.wait(max(0.0, start + n - time.monotonic()))

    def status_loop(self):
        while True:
            for s in self.status_reader.take(64):
                if self.rp.is_invalid(s):
                    continue
                rid = s.request_id
                if not rid.startswith("soak-"):
                    continue
                if s.state == "published":
                    self.detect_outcome[rid] = {1: "cloud", 2: "local"}.get(s.last_source, "?")
                elif s.state == "error":
                    self.detect_outcome[rid] = "error"
                    reason = re.sub(r"[0-9]+", "N", s.error)[:80]
                    self.detect_errors[reason] = self.detect_errors.get(reason, 0) + 1
            time.sleep(0.02)

    def counts(self):
        with self.lock:
            return sum(self.published.values()), sum(len(s) for s in self.received.values())

    def start(self):
        for f in (self.publish_loop, self.detect_loop, self.status_loop):
            threading.Thread(target=f, daemon=True).start()


def proc_sample(pid):
    st = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            k, _, v = line.partition(":")
            st[k] = v.split()
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return {"rss_kb": int(st["VmRSS"][0]), "anon_kb": int(st["RssAnon"][0]),
            "file_kb": int(st["RssFile"][0]), "threads": int(st["Threads"][0]),
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "ticks": ticks}


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def write_config(work, port, domain, model, lib, detect):
    rules = os.path.join(work, "soak-rules.toml")
    with open(rules, "w", encoding="utf-8") as f:
        for name, tname, _ in TELEMETRY:
            f.write(f'[[ros_to_mqtt]]\nname = "{name}"\nros_topic = "/soak/{name}"\nros_type = "{tname}"\n'
                    f'qos = {{ reliability = "reliable", durability = "volatile", depth = 1000 }}\n'
                    f'mqtt_topic = "soak/{name}"\nmqtt_qos = 1\n\n')
        f.write(f'[[ros_to_mqtt]]\nname = "camera"\nros_topic = "{CAMERA_TOPIC}"\n'
                'ros_type = "sensor_msgs/msg/Image"\nqos = "sensor-data"\nmqtt_topic = "camera/image"\n'
                'mqtt_qos = 0\nmax_rate_hz = 1.0\nimage = { format = "jpeg", quality = 75, max_width = 640 }\n')
    cfg = os.path.join(work, "agent.toml")
    with open(cfg, "w", encoding="utf-8") as f:
        f.write(f'''state_dir = "{work}/state"
[device]
product_key = "{PK}"
device_name = "{DEVICE}"
[mqtt]
host = "127.0.0.1"
port = {port}
keep_alive = "10s"
max_packet_size = "1MiB"
[mqtt.reconnect]
initial_delay = "1s"
max_delay = "5s"
[ros]
domain_id = {domain}
only_networks = ["127.0.0.1"]
[bridge]
mappings = ["{rules}"]
health_interval = "60s"
[onnx]
library = "{lib}"
threads = 1
[detect]
enabled = {'true' if detect else 'false'}
policy = "cloud-first"
image_topic = "{CAMERA_TOPIC}"
model = "{model}"
deadline = "1500ms"
frame_max_age = "200ms"
''')
    return cfg


def onnx_library():
    import onnxruntime
    capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
    for name in sorted(os.listdir(capi)):
        if name.startswith("libonnxruntime.so."):
            return os.path.join(capi, name)
    raise SystemExit(f"soak: ONNX Runtime's library is missing under {capi}: run scripts/setup-test-env.sh")


LEVEL = re.compile(r"\b(ERROR|WARN)\b")


def agent_lines(path):
    """(level, text) of each WARN and ERROR line of the agent's log."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LEVEL.search(line[:60])
            if m:
                out.append((m.group(1), line.rstrip()))
    return out


def growth(rows, key, from_min):
    base = [r for r in rows if r["t_s"] >= from_min * 60]
    if not base:
        return None
    first = base[0][key]
    last = rows[-1][key]
    peak = max(r[key] for r in base)
    return {"at_%d_min" % from_min: first, "end": last, "max": peak,
            "growth_end_pct": round(100.0 * (last - first) / first, 2) if first else None,
            "growth_max_pct": round(100.0 * (peak - first) / first, 2) if first else None}


def plot(rows, restarts, png, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot (scripts/soak.sh installs it)")
        return
    t = [r["t_s"] / 60 for r in rows]
    fig, ax = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    ax[0].plot(t, [r["rss_kb"] / 1024 for r in rows], label="RSS")
    ax[0].plot(t, [r["anon_kb"] / 1024 for r in rows], label="anonymous RSS")
    ax[0].set_ylabel("MB")
    ax[0].set_ylim(bottom=0)
    ax[1].plot(t, [r["fds"] for r in rows], label="open descriptors")
    ax[1].plot(t, [r["threads"] for r in rows], label="threads")
    ax[1].set_ylim(bottom=0)
    ax[2].plot(t, [r["outbox_bytes"] / 1e6 for r in rows], label="outbox on disk")
    ax[2].set_ylabel("MB")
    ax[2].set_ylim(bottom=0)
    ax[3].plot(t, [r["cpu_pct"] for r in rows], label="agent CPU (% of one core)")
    ax[3].plot(t, [r["backlog"] / 100 for r in rows], label="messages not yet delivered / 100")
    ax[3].set_xlabel("minutes")
    ax[3].set_ylim(bottom=0)
    for a in ax:
        for r in restarts:
            a.axvspan(r[0] / 60, r[1] / 60, color="0.85")
        a.legend(loc="upper right", fontsize=8)
        a.grid(alpha=0.3)
    ax[0].set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    log(f"plot: {png}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--restart-every", type=float, default=10)
    ap.add_argument("--outage", type=float, default=15)
    ap.add_argument("--domain", type=int, default=None, help="default: a free one, as the tests take")
    ap.add_argument("--png", default=None)
    ap.add_argument("--no-detect", action="store_true",
                    help="detection off (the requests go unanswered): to tell its memory from the bridge's")
    ap.add_argument("--drain", type=float, default=600, help="seconds to wait for the last messages")
    args = ap.parse_args()
    if not shutil.which("mosquitto"):
        raise SystemExit("soak: mosquitto is missing: apt-get install mosquitto (scripts/setup-test-env.sh)")
    if args.domain is None:
        args.domain = claim_domain()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="edge-agent-soak-")
    port = free_port()
    broker = Mosquitto(os.path.join(work, "mosquitto"), port)
    broker.start()
    model = os.path.join(work, "detector.onnx")
    subprocess.run([sys.executable, os.path.join(REPO, "tests/py/make_models.py"), "yolo-bench", model],
                   check=True, stdout=subprocess.DEVNULL)
    cfg = write_config(work, port, args.domain, model, onnx_library(), not args.no_detect)
    agent_log_path = os.path.join(args.out, "agent.log")
    agent_log = open(agent_log_path, "wb")
    env = dict(os.environ, NO_COLOR="1")
    env.pop("JOURNAL_STREAM", None)
    env.pop("RUST_LOG", None)
    agent = subprocess.Popen([args.agent, "run", "--config", cfg], stdout=agent_log, stderr=agent_log, env=env)
    log(f"agent pid {agent.pid}, mosquitto on port {port}, ROS domain {args.domain}, work {work}")
    load = Load(args.domain, port, args.rate)
    load.wait_matched(60)
    # spawned, not forked: a fork of a process with a running DDS participant hangs
    mp = multiprocessing.get_context("spawn")
    stop_camera = mp.Event()
    camera = mp.Process(target=camera_process, args=(args.domain, stop_camera), daemon=True)
    camera.start()
    uptime_start = open("/proc/loadavg", encoding="utf-8").read().split()[:3]
    load.start()
    t0 = time.monotonic()
    duration = args.minutes * 60
    rows, restarts = [], []
    csv_path = os.path.join(args.out, "soak.csv")
    fields = ["t_s", "rss_kb", "anon_kb", "file_kb", "fds", "threads", "outbox_bytes", "cpu_pct",
              "published", "received", "backlog", "detect_sent", "detect_answered", "broker_up"]
    out = open(csv_path, "w", newline="", encoding="utf-8")
    w = csv.DictWriter(out, fieldnames=fields)
    w.writeheader()
    last_ticks, last_t = None, None
    next_restart = args.restart_every * 60 if args.restart_every > 0 else float("inf")
    broker_down_until = None
    hz = os.sysconf("SC_CLK_TCK")

    def sample(now):
        nonlocal last_ticks, last_t
        p = proc_sample(agent.pid)
        cpu = 0.0 if last_ticks is None else 100.0 * (p["ticks"] - last_ticks) / hz / (now - last_t)
        last_ticks, last_t = p["ticks"], now
        pub, rec = load.counts()
        row = {"t_s": round(now - t0, 1), "rss_kb": p["rss_kb"], "anon_kb": p["anon_kb"],
               "file_kb": p["file_kb"], "fds": p["fds"], "threads": p["threads"],
               "outbox_bytes": dir_bytes(os.path.join(work, "state", "outbox")),
               "cpu_pct": round(cpu, 1), "published": pub, "received": rec, "backlog": pub - rec,
               "detect_sent": load.detect_sent, "detect_answered": len(load.detect_outcome),
               "broker_up": int(broker.up())}
        rows.append(row)
        w.writerow(row)
        out.flush()
        if len(rows) % 6 == 1:
            log(f"t={row['t_s'] / 60:.1f} min RSS {row['rss_kb'] / 1024:.1f} MB (anon "
                f"{row['anon_kb'] / 1024:.1f}) fds {row['fds']} threads {row['threads']} outbox "
                f"{row['outbox_bytes'] / 1e6:.1f} MB cpu {row['cpu_pct']} % published {pub} backlog {pub - rec}")

    next_sample = 0.0
    while True:
        now = time.monotonic()
        el = now - t0
        if agent.poll() is not None:
            raise SystemExit(f"soak: the agent exited ({agent.returncode}) at {el:.0f} s; see {agent_log_path}")
        if el >= next_sample:
            sample(now)
            next_sample += SAMPLE_EVERY
        if el >= duration:
            break
        if broker_down_until is None and el >= next_restart:
            log("broker stopped")
            broker.stop()
            broker_down_until = el + args.outage
            restarts.append([el, el + args.outage])
            next_restart += args.restart_every * 60
        if broker_down_until is not None and el >= broker_down_until:
            broker.start()
            restarts[-1][1] = time.monotonic() - t0
            broker_down_until = None
            log("broker started")
        time.sleep(0.2)
    if not broker.up():
        broker.start()
    load.stop_flag.set()
    stop_camera.set()
    camera.join(10)
    pub, _ = load.counts()
    log(f"load stopped after {args.minutes} min: {pub} telemetry messages published; waiting for all")
    drain_start = time.monotonic()
    while time.monotonic() - drain_start < args.drain:
        if load.counts()[1] >= pub:
            break
        time.sleep(0.5)
    drain_s = time.monotonic() - drain_start
    sample(time.monotonic())
    time.sleep(3)  # the last detection statuses
    agent.send_signal(signal.SIGTERM)
    try:
        code = agent.wait(60)
    except subprocess.TimeoutExpired:
        agent.kill()
        code = "killed after 60 s"
    load.sub.loop_stop()
    load.cloud.loop_stop()
    broker.stop()
    out.close()

    lost = {}
    for name, _, _ in TELEMETRY:
        got = load.received[name]
        missing = load.published[name] - len([s for s in got if s < load.published[name]])
        lost[name] = missing
    outcomes = {}
    for v in load.detect_outcome.values():
        outcomes[v] = outcomes.get(v, 0) + 1
    lines = agent_lines(agent_log_path)
    errors = [text for level, text in lines if level == "ERROR"]
    warns = {}
    for level, text in lines:
        if level == "WARN":
            key = re.sub(r"[0-9]+(\.[0-9]+)?", "N", text.split("WARN", 1)[1])[:100]
            warns[key] = warns.get(key, 0) + 1
    summary = {
        "minutes": args.minutes, "rate": args.rate, "restart_every_min": args.restart_every,
        "outage_s": args.outage, "load_at_start": uptime_start,
        "load_at_end": open("/proc/loadavg", encoding="utf-8").read().split()[:3],
        "published": load.published, "lost": lost, "lost_total": sum(lost.values()),
        "duplicates": load.duplicates, "writes_blocked_10s": load.blocked, "drain_s": round(drain_s, 1),
        "detect_sent": load.detect_sent, "detect_outcomes": outcomes, "detect_errors": load.detect_errors,
        "detect_unanswered": load.detect_sent - len(load.detect_outcome),
        "cloud_answered": load.cloud_answered,
        "error_lines": errors[:20], "error_count": len(errors), "warn_kinds": warns,
        "agent_exit": code, "broker_restarts": len(restarts),
        "rss": growth(rows, "rss_kb", 5), "anon": growth(rows, "anon_kb", 5),
        "fds": growth(rows, "fds", 5), "threads": growth(rows, "threads", 5),
        "outbox_bytes_end": rows[-1]["outbox_bytes"],
    }
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    title = (f"edge-agent soak: {args.minutes:g} min, {args.rate} msg/s + detection 1/s + camera 10 Hz, "
             f"broker down {args.outage:g} s every {args.restart_every:g} min; lost {sum(lost.values())}")
    plot(rows, restarts, args.png or os.path.join(args.out, "soak.png"), title)
    shutil.rmtree(work, ignore_errors=True)
    ok = sum(lost.values()) == 0 and code == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
