//! `edge-agent msg ...` as a user runs it: output, exit codes, messages on stderr.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn agent(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge-agent"));
    cmd.args(args)
        .env_remove("AMENT_PREFIX_PATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run edge-agent");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version_and_help() {
    let o = agent(&["--version"], b"", &[]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("edge-agent {}", env!("CARGO_PKG_VERSION"))
    );
    let o = agent(&["msg", "--help"], b"", &[]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("decode"));
}

#[test]
fn bad_usage_exits_64() {
    let o = agent(&["msg", "frobnicate"], b"", &[]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("unrecognized subcommand 'frobnicate'"));

    let o = agent(&["msg", "show", "nope_msgs/Missing"], b"", &[]);
    assert_eq!(o.status.code(), Some(64));
    assert!(
        stderr(&o).contains("unknown type 'nope_msgs/msg/Missing'"),
        "{}",
        stderr(&o)
    );

    let o = agent(&["msg", "show", "not a type"], b"", &[]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("'not a type' is not a type name"));
}

#[test]
fn encode_then_decode_round_trips() {
    let json = br#"{"header":{"stamp":{"sec":1700000000,"nanosec":5},"frame_id":"gps_link"},"latitude":47.3769,"longitude":8.5417,"altitude":"NaN"}"#;
    let enc = agent(&["msg", "encode", "sensor_msgs/msg/NavSatFix"], json, &[]);
    assert_eq!(enc.status.code(), Some(0), "{}", stderr(&enc));
    assert_eq!(&enc.stdout[..4], &[0, 1, 0, 0]);
    let dec = agent(
        &["msg", "decode", "sensor_msgs/NavSatFix"],
        &enc.stdout,
        &[],
    );
    assert_eq!(dec.status.code(), Some(0), "{}", stderr(&dec));
    let v: serde_json::Value = serde_json::from_slice(&dec.stdout).unwrap();
    assert_eq!(v["header"]["frame_id"], "gps_link");
    assert_eq!(v["latitude"], 47.3769);
    assert_eq!(v["altitude"], "NaN");
    assert_eq!(v["status"]["service"], 0);

    let hex = agent(
        &["msg", "encode", "std_msgs/String", "--hex"],
        br#"{"data":"hi"}"#,
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&hex.stdout).trim(),
        "00010000030000006869 00".replace(' ', "")
    );
    let dec = agent(
        &["msg", "decode", "std_msgs/String", "--hex"],
        &hex.stdout,
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&dec.stdout).trim(),
        r#"{"data":"hi"}"#
    );
}

#[test]
fn bad_data_exits_65_with_the_path() {
    let o = agent(
        &["msg", "encode", "geometry_msgs/PoseStamped"],
        br#"{"pose":{"position":{"q":1}}}"#,
        &[],
    );
    assert_eq!(o.status.code(), Some(65));
    assert_eq!(
        stderr(&o).trim(),
        "edge-agent: cannot encode geometry_msgs/PoseStamped: pose.position.q: unknown field"
    );
    let o = agent(
        &["msg", "decode", "std_msgs/String"],
        &[0, 1, 0, 0, 9, 0, 0, 0, b'x'],
        &[],
    );
    assert_eq!(o.status.code(), Some(65));
    assert!(
        stderr(&o).contains("data: string length 9 exceeds the 1 bytes left"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn definitions_from_folders_and_ament_prefix_path() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("ws/src/arm_msgs");
    std::fs::create_dir_all(pkg.join("msg")).unwrap();
    std::fs::write(
        pkg.join("package.xml"),
        "<package format=\"3\"><name>arm_msgs</name></package>",
    )
    .unwrap();
    std::fs::write(
        pkg.join("msg/Gripper.msg"),
        "# jaw\nfloat32 opening 0.5\nbool closed\n",
    )
    .unwrap();
    let o = agent(
        &[
            "msg",
            "show",
            "arm_msgs/Gripper",
            "--interfaces",
            pkg.to_str().unwrap(),
        ],
        b"",
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "float32 opening 0.5\nbool closed\n"
    );

    // A ROS install prefix, as `source install/setup.bash` puts in AMENT_PREFIX_PATH.
    let prefix = dir.path().join("install");
    std::fs::create_dir_all(prefix.join("share/chassis_msgs/msg")).unwrap();
    std::fs::write(
        prefix.join("share/chassis_msgs/msg/Wheel.msg"),
        "float64 rpm\n",
    )
    .unwrap();
    // The robot's definition of a standard type takes precedence over the bundled one.
    std::fs::create_dir_all(prefix.join("share/std_msgs/msg")).unwrap();
    std::fs::write(
        prefix.join("share/std_msgs/msg/String.msg"),
        "string data\nuint8 extra\n",
    )
    .unwrap();
    let path = format!("{}:/nonexistent", prefix.display());
    let o = agent(
        &["msg", "show", "chassis_msgs/msg/Wheel"],
        b"",
        &[("AMENT_PREFIX_PATH", &path)],
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "float64 rpm\n");
    let o = agent(
        &["msg", "show", "std_msgs/String"],
        b"",
        &[("AMENT_PREFIX_PATH", &path)],
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "string data\nuint8 extra\n"
    );

    let o = agent(&["msg", "list", "--package", "std_srvs"], b"", &[]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "std_srvs/srv/Empty\nstd_srvs/srv/SetBool\nstd_srvs/srv/Trigger\n"
    );
}

#[test]
fn malformed_definition_names_file_line_column() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("bad_msgs");
    std::fs::create_dir_all(pkg.join("msg")).unwrap();
    let file = pkg.join("msg/Broken.msg");
    std::fs::write(&file, "int32 ok\nfloat64[x] values\n").unwrap();
    let o = agent(
        &[
            "msg",
            "show",
            "bad_msgs/Broken",
            "--interfaces",
            dir.path().to_str().unwrap(),
        ],
        b"",
        &[],
    );
    assert_eq!(o.status.code(), Some(64));
    assert_eq!(
        stderr(&o).trim(),
        format!(
            "edge-agent: {}:2:9: array size 'x' is not a non-negative integer",
            file.display()
        )
    );
}
