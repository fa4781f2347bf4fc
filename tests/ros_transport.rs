//! The default ROS 2 transport against Eclipse Cyclone DDS 0.10 (the DDS of ROS 2
//! Humble and Jazzy): messages both ways, byte-correct, large samples of every size
//! modulo 4, and the node in the ROS graph.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edge_agent::ros::codec::{self, DecodeOptions, EncodeOptions};
use edge_agent::ros::transport::dds::{DdsOptions, DdsTransport};
use edge_agent::ros::transport::{Qos, Transport};
use edge_agent::ros::TypeName;
use serde_json::json;
use support::ros_peer::RosPeer;
use support::test_registry;

fn transport(domain: u16, name: &str, ns: &str) -> DdsTransport {
    DdsTransport::start(&DdsOptions {
        domain_id: domain,
        node_name: name.into(),
        namespace: ns.into(),
        only_networks: vec!["127.0.0.1".parse().unwrap()],
        distro: None,
        config_file: None,
    })
    .expect("start the DDS transport")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cyclone_to_agent_and_back_byte_correct() {
    let dom = support::domain();
    let domain = dom.id;
    let reg = test_registry();
    let mut peer = tokio::task::block_in_place(|| RosPeer::start(domain));
    let t = transport(domain, "edge_agent", "/");
    let ty = TypeName::parse("sensor_msgs/msg/NavSatFix").unwrap();
    let schema = reg.schema("sensor_msgs/msg/NavSatFix").unwrap();

    // Cyclone -> agent
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    t.subscribe("/gps/fix", &ty, schema.clone(), Qos::ros_default(), tx)
        .unwrap();
    let value = json!({"header":{"stamp":{"sec":1763789000,"nanosec":5},"frame_id":"gps"},
        "status":{"status":1,"service":3},"latitude":30.274085,"longitude":120.15507,"altitude":"NaN",
        "position_covariance":[0.25,0,0,0,0.25,0,0,0,1],"position_covariance_type":2});
    tokio::task::block_in_place(|| {
        peer.publisher("gps", "/gps/fix", "sensor_msgs/msg/NavSatFix", json!({}));
        peer.wait_matched("gps");
        peer.write("gps", value.clone());
    });
    let sample = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a sample")
        .unwrap();
    let got = codec::decode_to_value(&schema, &sample.cdr, &DecodeOptions::default()).unwrap();
    support::json_matches(&schema, &got, &value).unwrap();
    assert!(sample.source_time_ns.is_some());

    // agent -> Cyclone: Cyclone's own serialization of what it received equals ours.
    let out_ty = TypeName::parse("edge_agent_msgs/msg/RobotStatus").unwrap();
    let out_schema = reg.schema("edge_agent_msgs/msg/RobotStatus").unwrap();
    tokio::task::block_in_place(|| {
        peer.subscriber(
            "status",
            "/robot/status",
            "edge_agent_msgs/msg/RobotStatus",
            json!({}),
        )
    });
    let publisher = t
        .publisher(
            "/robot/status",
            &out_ty,
            out_schema.clone(),
            Qos::ros_default(),
        )
        .unwrap();
    let value = json!({"header":{"frame_id":"base"},"state":2,"mode":"auto","fruits_picked":1234,
        "working_time_s":3600.5,"row_id":"R7","active_faults":["E12","W3"],"emergency_stop":false});
    let cdr =
        Bytes::from(codec::encode_value(&out_schema, &value, &EncodeOptions::default()).unwrap());
    let mut got = Vec::new();
    for _ in 0..100 {
        publisher.publish(&cdr).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        got = peer.received("status");
        if !got.is_empty() {
            break;
        }
    }
    assert!(!got.is_empty(), "Cyclone received nothing");
    let ours = codec::decode_to_value(&out_schema, &cdr, &DecodeOptions::default()).unwrap();
    support::json_matches(&out_schema, &got[0]["value"], &ours).unwrap();
    let theirs = support::unhex(got[0]["cdr"].as_str().unwrap());
    assert_eq!(
        &theirs[4..],
        &cdr[4..theirs.len().min(cdr.len())],
        "Cyclone's bytes differ from ours"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_samples_of_every_size_modulo_4_reach_cyclone() {
    let dom = support::domain();
    let domain = dom.id;
    let reg = test_registry();
    let mut peer = tokio::task::block_in_place(|| RosPeer::start(domain));
    let t = transport(domain, "edge_agent", "/");
    let ty = TypeName::parse("std_msgs/msg/String").unwrap();
    let schema = reg.schema("std_msgs/msg/String").unwrap();
    tokio::task::block_in_place(|| {
        peer.subscriber("big", "/big", "std_msgs/msg/String", json!({"depth": 100}))
    });
    let mut qos = Qos::ros_default();
    qos.depth = 100;
    let p: Arc<dyn edge_agent::ros::transport::RawPublisher> =
        t.publisher("/big", &ty, schema.clone(), qos).unwrap();
    // Wait for the match before sending, so nothing is published into the void.
    for _ in 0..200 {
        if p.subscription_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... and for the reader's side of it: a volatile reader drops what a writer sent
    // before the reader matched it.
    tokio::task::block_in_place(|| peer.wait_matched("big"));
    let sizes: Vec<usize> = [1400usize, 2000, 5000, 100_000]
        .iter()
        .flat_map(|b| (0..4).map(move |k| b + k))
        .collect();
    for n in &sizes {
        let text: String = std::iter::repeat_n('a', *n).collect();
        let cdr = Bytes::from(
            codec::encode_value(&schema, &json!({"data": text}), &EncodeOptions::default())
                .unwrap(),
        );
        p.publish(&cdr).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let got = tokio::task::block_in_place(|| {
        peer.wait_received("big", sizes.len(), Duration::from_secs(20))
    });
    let lens: Vec<usize> = got
        .iter()
        .map(|m| m["value"]["data"].as_str().unwrap().len())
        .collect();
    assert_eq!(lens, sizes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_is_in_the_ros_graph_with_its_name_and_namespace() {
    let dom = support::domain();
    let domain = dom.id;
    let mut peer = tokio::task::block_in_place(|| RosPeer::start(domain));
    let _t = transport(domain, "cloud_link", "/picker07");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = tokio::task::block_in_place(|| peer.nodes());
        if nodes.contains(&("/picker07".to_owned(), "cloud_link".to_owned())) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node not announced; seen {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
