//! The ROS 2 side of the agent: interface definitions, the registry that finds them,
//! and the dynamic CDR <-> JSON codec. Nothing outside this module knows how ROS 2
//! lays out bytes.

pub mod codec;
pub mod config;
pub mod msgdef;
pub mod registry;
pub mod schema;
pub mod transport;

pub use registry::{Registry, RegistryError, TypeName};
pub use schema::MsgSchema;
