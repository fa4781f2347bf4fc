//! The ROS 2 side of the agent: interface definitions, the registry that finds them,
//! the dynamic CDR <-> JSON codec, and the fixed message types the agent reads itself
//! (`cdr`, `image`). Nothing outside this module knows how ROS 2 lays out bytes.

pub mod action;
pub mod cdr;
pub mod codec;
pub mod config;
pub mod image;
pub mod msgdef;
pub mod registry;
pub mod schema;
pub mod transport;

pub use registry::{Registry, RegistryError, TypeName};
pub use schema::MsgSchema;
