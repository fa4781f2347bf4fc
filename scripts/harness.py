"""What the hand-run harnesses (scripts/soak.py, scripts/power_cut.py) both need: a free
port, a ROS domain of their own, waiting for a condition, and a persistent mosquitto
that can be stopped and started again on the same port."""

import fcntl
import getpass
import random
import os
import signal
import socket
import subprocess
import tempfile
import time


def free_port(host="127.0.0.1"):
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def claim_domain():
    """A ROS domain id no test or other harness on this machine is using, held until this
    process ends: the same lock files over the same range as the tests' domains
    (tests/support/mod.rs, `domain()`)."""
    first, last = 20, 230
    n = last - first + 1
    start = random.randrange(n)
    for i in range(n):
        d = first + (start + i) % n
        f = open(os.path.join(tempfile.gettempdir(), f"edge-agent-test-domain-{d}.lock"), "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _held.append(f)
        return d
    raise SystemExit(f"every ROS domain in {first}..{last} is in use")


_held = []


def wait_until(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise SystemExit(f"{what} within {timeout} s")


class Mosquitto:
    """mosquitto on `port` of `host`, its files in `folder`: persistent, no limit on
    queued messages, so that a restart keeps every message it acknowledged and a slow
    subscriber loses nothing."""

    def __init__(self, folder, port, host="127.0.0.1"):
        self.port = port
        self.dir = folder
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        with open(self.conf, "w", encoding="utf-8") as f:
            f.write(f"listener {port} {host}\nallow_anonymous true\npersistence true\n"
                    # as root, mosquitto would drop to its own user, which cannot write here
                    f"user {getpass.getuser()}\n"
                    f"persistence_location {self.dir}/\nautosave_interval 30\n"
                    "max_queued_messages 0\nmax_queued_bytes 0\n")
        self.log = open(os.path.join(self.dir, "mosquitto.log"), "ab")
        self.proc = None

    def up(self):
        return self.proc is not None

    def start(self):
        self.proc = subprocess.Popen(["mosquitto", "-c", self.conf], stdout=self.log, stderr=self.log)

        def listening():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False
        wait_until(listening, 20, f"mosquitto did not listen on port {self.port}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.proc = None
