//! The cloud link: one long-lived MQTT connection (3.1.1 or 5) owned by the agent, with
//! connection profiles (plain, TLS, Aliyun device secret), last will and birth messages,
//! reconnect with jittered backoff, and the durable outbox behind every QoS 1 message.
//! Other modules publish and subscribe through [`LinkHandle`]; none of them sees the
//! connection itself.

pub mod auth;
pub mod config;
pub mod devlog;
pub mod link;
pub mod message;
pub mod outbox;
mod session;
pub mod stats;
pub mod tls;
pub mod wire;

pub use link::{link, Link, LinkHandle, LinkState, PublishError, ShutdownPolicy};
pub use message::{Incoming, Message, Props, QoS};
pub use session::Failure;
