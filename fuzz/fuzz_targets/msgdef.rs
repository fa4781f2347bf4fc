//! Fuzzes the interface definition parser with `.msg`, `.srv` and `.action` text, as
//! found on a robot under AMENT_PREFIX_PATH. The first byte picks which. Must return Ok
//! or Err with a place, never panic.
#![no_main]

use edge_agent::ros::msgdef;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    match pick % 3 {
        0 => drop(msgdef::parse_message(text, "fuzz_msgs", "T", "T.msg")),
        1 => drop(msgdef::parse_service(text, "fuzz_msgs", "S", "S.srv")),
        _ => drop(msgdef::parse_action(text, "fuzz_msgs", "A", "A.action")),
    }
});
