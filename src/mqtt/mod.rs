//! The cloud link: one long-lived MQTT connection (rumqttc) owned by the agent, with
//! connection profiles (plain, TLS, Aliyun device secret), last will and birth messages,
//! reconnect with jittered backoff, and the durable outbox behind every QoS 1 message.
//! Other modules publish and subscribe through [`LinkHandle`]; none of them touches
//! rumqttc.

pub mod auth;
pub mod config;
pub mod devlog;
pub mod link;
pub mod message;
pub mod outbox;
mod session;
pub mod stats;
pub mod tls;

pub use link::{link, Link, LinkHandle, LinkState, PublishError, ShutdownPolicy};
pub use message::{Incoming, Message, Props, QoS};
pub use session::Failure;
