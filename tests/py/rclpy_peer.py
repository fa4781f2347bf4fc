"""An rclpy node for the rcl transport's tests (run in a sourced ROS 2 environment).

    rclpy_peer.py pub TOPIC TYPE JSON [--rate HZ] [--seconds S] [--latched]
    rclpy_peer.py echo TOPIC TYPE [--count N] [--seconds S]
    rclpy_peer.py setbool SERVICE std_srvs/srv/SetBool [--seconds S]
    rclpy_peer.py burst TOPIC std_msgs/msg/String [--count N]
    rclpy_peer.py action ACTION pkg/action/T RESULT_JSON [--count STEPS] [--seconds S]

`pub` publishes the message given as JSON (fields as in `ros2 topic pub`) until killed or
S seconds pass; with --latched it publishes once, transient-local (as a map or a robot
description is published), and stays on the graph. `echo` prints each message received as one JSON line, after the line
`ready`, and exits after N messages or S seconds. `setbool` serves a std_srvs/SetBool
service (a camera switch): it prints `ready`, then `called <data>` for each call, and
answers success with the message "on" or "off". `burst` (reliable, history 1000) waits
for a subscriber and prints `matched`, publishes one message and prints `one`, then
waits for a line on its standard input and publishes N more as fast as it can, prints
`done`, and stays until killed so that the middleware can deliver them. `action` serves
an action: it prints `ready`, then `goal <goal as JSON>` for each goal it accepts; each
goal sends STEPS feedback messages (`progress` k/STEPS and `stage` "step k", 200 ms apart)
and succeeds with RESULT_JSON, or ends canceled (printing `canceled`) when a cancel comes
first. TYPE is `pkg/msg/Name` (or `pkg/action/Name`).
"""

import argparse
import json
import sys
import time

import rclpy
from rosidl_runtime_py.convert import message_to_ordereddict
from rosidl_runtime_py.set_message import set_message_fields
from rosidl_runtime_py.utilities import get_message


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("op", choices=["pub", "echo", "setbool", "burst", "action"])
    ap.add_argument("topic")
    ap.add_argument("type")
    ap.add_argument("json", nargs="?", default="{}")
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--latched", action="store_true")
    a = ap.parse_args()

    rclpy.init()
    node = rclpy.create_node("rclpy_peer")
    end = time.monotonic() + a.seconds
    if a.op == "setbool":
        from std_srvs.srv import SetBool

        def on_call(req, resp):
            print(f"called {req.data}", flush=True)
            resp.success = True
            resp.message = "on" if req.data else "off"
            return resp

        node.create_service(SetBool, a.topic, on_call)
        print("ready", flush=True)
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.1)
        return 0
    if a.op == "action":
        return serve_action(node, a, end)
    cls = get_message(a.type)
    if a.op == "burst":
        pub = node.create_publisher(cls, a.topic, 1000)
        while pub.get_subscription_count() == 0:
            rclpy.spin_once(node, timeout_sec=0.05)
        print("matched", flush=True)
        msg = cls()
        msg.data = "0"
        pub.publish(msg)
        print("one", flush=True)
        sys.stdin.readline()
        for i in range(1, a.count + 1):
            msg.data = str(i)
            pub.publish(msg)
        print("done", flush=True)
        while True:
            rclpy.spin_once(node, timeout_sec=0.1)
    if a.op == "pub":
        msg = cls()
        set_message_fields(msg, json.loads(a.json))
        if a.latched:
            from rclpy.qos import DurabilityPolicy, QoSProfile
            qos = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
            pub = node.create_publisher(cls, a.topic, qos)
            pub.publish(msg)
        else:
            pub = node.create_publisher(cls, a.topic, 10)
        while time.monotonic() < end:
            if not a.latched:
                pub.publish(msg)
            rclpy.spin_once(node, timeout_sec=1.0 / a.rate)
    else:
        got = []

        def on_msg(m):
            got.append(m)
            print(json.dumps(message_to_ordereddict(m)), flush=True)

        node.create_subscription(cls, a.topic, on_msg, 10)
        print("ready", flush=True)
        while len(got) < a.count and time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.1)
    node.destroy_node()
    rclpy.shutdown()
    return 0


def serve_action(node, a, end):
    from rclpy.action import ActionServer, CancelResponse, GoalResponse
    from rclpy.callback_groups import ReentrantCallbackGroup
    from rclpy.executors import MultiThreadedExecutor
    from rosidl_runtime_py.utilities import get_action

    cls = get_action(a.type)
    steps = a.count

    def on_goal(goal):
        print("goal " + json.dumps(message_to_ordereddict(goal)), flush=True)
        return GoalResponse.ACCEPT

    def execute(handle):
        for k in range(steps):
            if handle.is_cancel_requested:
                handle.canceled()
                print("canceled", flush=True)
                return cls.Result()
            fb = cls.Feedback()
            set_message_fields(fb, {"progress": (k + 1) / steps, "stage": f"step {k + 1}"})
            handle.publish_feedback(fb)
            time.sleep(0.2)
        handle.succeed()
        result = cls.Result()
        set_message_fields(result, json.loads(a.json))
        return result

    ActionServer(node, cls, a.topic, execute, goal_callback=on_goal,
                 cancel_callback=lambda _: CancelResponse.ACCEPT,
                 callback_group=ReentrantCallbackGroup())
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    print("ready", flush=True)
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
