//! Fuzzes update packages: the input is taken as a `.tar.gz` and extracted into a
//! temporary slot with small limits (the hostile-package rules: no paths out of the
//! slot, no links, no devices, sizes and counts bounded), and its manifest checked.
//! Must return Ok or Err, never panic, never write outside the slot.
#![no_main]

use edge_agent::ota::package::{self, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let pkg = dir.path().join("p.tar.gz");
    if std::fs::write(&pkg, data).is_err() {
        return;
    }
    let slot = dir.path().join("slot");
    let limits = Limits {
        max_bytes: 1 << 20,
        why: "the fuzz limit".into(),
        max_files: 64,
        max_rebuilt: 1 << 20,
    };
    if let Ok(m) = package::extract(&pkg, &slot, limits) {
        let _ = package::check_components(&slot, &m);
        let _ = m.check_hooks();
    }
    // Nothing beside the package and the slot.
    for e in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
        let name = e.file_name();
        assert!(
            name == "p.tar.gz" || name == "slot" || name.to_string_lossy().starts_with("slot"),
            "extraction wrote {name:?} outside the slot"
        );
    }
});
