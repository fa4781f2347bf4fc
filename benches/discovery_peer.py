"""A DDS peer for the discovery benchmark (scripts/bench-discovery.sh): a ROS 2
publisher of std_msgs/String on /chatter at 50 Hz, or a subscriber that prints how long
after its participant was created the first message came (the peer-to-peer baseline).

usage: discovery_peer.py cyclone|rclpy pub|sub DOMAIN
  cyclone: Eclipse Cyclone DDS 0.10 (the cyclonedds package of the test virtualenv)
  rclpy:   a ROS 2 node on the sourced ROS 2's RMW (RMW_IMPLEMENTATION, e.g.
           rmw_fastrtps_cpp)
The publisher prints "ready" once publishing; the subscriber prints the seconds to the
first message, or "none" after 30 s.
"""

import sys
import time

kind, role, domain = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.monotonic()

if kind == "cyclone":
    from dataclasses import dataclass

    from cyclonedds.core import Policy, Qos
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.idl import IdlStruct
    from cyclonedds.pub import DataWriter
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic

    @dataclass
    class String_(IdlStruct, typename="std_msgs::msg::dds_::String_"):
        data: str

    t0 = time.monotonic()
    dp = DomainParticipant(domain)
    qos = Qos(Policy.Reliability.Reliable(100_000_000), Policy.Durability.Volatile, Policy.History.KeepLast(10))
    topic = Topic(dp, "rt/chatter", String_, qos=qos)
    if role == "pub":
        w = DataWriter(dp, topic, qos=qos)
        print("ready", flush=True)
        while True:
            w.write(String_(data="discovery"))
            time.sleep(0.02)
    else:
        r = DataReader(dp, topic, qos=qos)
        while time.monotonic() - t0 < 30:
            if r.take(1):
                print(f"{time.monotonic() - t0:.4f}", flush=True)
                sys.exit(0)
            time.sleep(0.001)
        print("none", flush=True)
else:
    import rclpy
    from std_msgs.msg import String

    rclpy.init()
    t0 = time.monotonic()
    node = rclpy.create_node(f"discovery_{role}")
    if role == "pub":
        p = node.create_publisher(String, "/chatter", 10)
        print("ready", flush=True)
        msg = String()
        msg.data = "discovery"
        while True:
            p.publish(msg)
            rclpy.spin_once(node, timeout_sec=0.02)
    else:
        got = []
        node.create_subscription(String, "/chatter", lambda m: got.append(time.monotonic()), 10)
        while time.monotonic() - t0 < 30 and not got:
            rclpy.spin_once(node, timeout_sec=0.01)
        print(f"{got[0] - t0:.4f}" if got else "none", flush=True)
