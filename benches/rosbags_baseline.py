"""Baseline for the codec benchmark: rosbags' CDR deserializer plus json.dumps, on the
same messages the Rust benchmark decodes.

usage: rosbags_baseline.py OUT_DIR
Writes OUT_DIR/<case>.cdr (the inputs, serialized by rosbags) and prints one JSON line
per case: {"case", "type", "bytes", "payload", "seconds_per_msg"}.
"""

import base64
import json
import os
import sys
import time

import numpy as np
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.base import Nodetype

ts = get_typestore(Stores.ROS2_JAZZY)
T = ts.types


def header(frame):
    return T["std_msgs/msg/Header"](
        stamp=T["builtin_interfaces/msg/Time"](sec=1763789000, nanosec=123456789), frame_id=frame
    )


def cases():
    rng = np.random.default_rng(7)
    navsat = T["sensor_msgs/msg/NavSatFix"](
        header=header("gps_link"),
        status=T["sensor_msgs/msg/NavSatStatus"](status=0, service=1),
        latitude=30.274085,
        longitude=120.155070,
        altitude=12.5,
        position_covariance=np.array([0.25, 0, 0, 0, 0.25, 0, 0, 0, 1.0]),
        position_covariance_type=2,
    )
    joints = T["sensor_msgs/msg/JointState"](
        header=header("arm_base"),
        name=[f"joint_{i}" for i in range(1, 8)],
        position=rng.uniform(-3.1, 3.1, 7),
        velocity=rng.uniform(-1, 1, 7),
        effort=rng.uniform(-20, 20, 7),
    )
    image = T["sensor_msgs/msg/Image"](
        header=header("camera_color_optical_frame"),
        height=480,
        width=640,
        encoding="rgb8",
        is_bigendian=0,
        step=640 * 3,
        data=rng.integers(0, 256, 640 * 480 * 3, dtype=np.uint8),
    )
    poses = T["geometry_msgs/msg/PoseArray"](
        header=header("map"),
        poses=[
            T["geometry_msgs/msg/Pose"](
                position=T["geometry_msgs/msg/Point"](x=float(i), y=float(i) * 0.5, z=1.25),
                orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.3826834, w=0.9238795),
            )
            for i in range(1000)
        ],
    )
    return [
        ("navsatfix", "sensor_msgs/msg/NavSatFix", navsat, 0),
        ("jointstate7", "sensor_msgs/msg/JointState", joints, 0),
        ("image640x480", "sensor_msgs/msg/Image", image, 640 * 480 * 3),
        ("posearray1000", "geometry_msgs/msg/PoseArray", poses, 0),
    ]


def to_json(desc, v):
    """A rosbags value in edge-agent's JSON form (base64 for byte arrays)."""
    kind, rest = desc
    if kind == Nodetype.BASE:
        return v.item() if hasattr(v, "item") else v
    if kind == Nodetype.NAME:
        return {
            f: to_json(d, getattr(v, f))
            for f, d in ts.fielddefs[rest][1]
            if f != "structure_needs_at_least_one_member"
        }
    elem = rest[0]
    if elem[0] == Nodetype.BASE and elem[1][0] in ("uint8", "byte"):
        return base64.b64encode(np.asarray(v).astype(np.uint8).tobytes()).decode()
    if elem[0] == Nodetype.BASE and elem[1][0] != "string":
        return np.asarray(v).tolist()
    return [to_json(elem, x) for x in v]


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    for case, name, msg, payload in cases():
        raw = bytes(ts.serialize_cdr(msg, name))
        with open(os.path.join(out_dir, case + ".cdr"), "wb") as f:
            f.write(raw)

        def once():
            return json.dumps(to_json((Nodetype.NAME, name), ts.deserialize_cdr(raw, name)))

        once()
        n, start = 0, time.perf_counter()
        while True:
            once()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed > 2.0 and n >= 5:
                break
        print(json.dumps({"case": case, "type": name, "bytes": len(raw), "payload": payload,
                          "seconds_per_msg": elapsed / n}))


if __name__ == "__main__":
    main()
