//! Process exit codes (from BSD sysexits), shared by every command.

/// Success.
pub const OK: u8 = 0;
/// Bad command line or configuration.
pub const USAGE: u8 = 64;
/// Bad input data (a CDR buffer, a JSON document).
pub const DATA: u8 = 65;
/// A bug or an unexpected condition inside the agent.
pub const SOFTWARE: u8 = 70;
/// The broker (or another service) cannot be reached.
pub const UNAVAILABLE: u8 = 69;
/// A file or folder the agent needs cannot be created or written.
pub const CANTCREAT: u8 = 73;
/// Try again later (the outbox is in use by the running agent).
pub const TEMPFAIL: u8 = 75;
