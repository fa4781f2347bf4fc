//! Embeds the `.msg`/`.srv`/`.action` files under `interfaces/` into the binary, so the agent
//! knows the standard types on a robot whose ROS install lacks them.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("interfaces");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut entries = Vec::new();
    if let Ok(packages) = std::fs::read_dir(&root) {
        for pkg in packages.flatten() {
            let pkg_path = pkg.path();
            let Some(pkg_name) = pkg_path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_owned)
            else {
                continue;
            };
            for kind in ["msg", "srv", "action"] {
                let Ok(files) = std::fs::read_dir(pkg_path.join(kind)) else {
                    continue;
                };
                for file in files.flatten() {
                    let path = file.path();
                    if path.extension().and_then(|e| e.to_str()) != Some(kind) {
                        continue;
                    }
                    let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                        continue;
                    };
                    entries.push((pkg_name.clone(), kind, stem.to_owned(), path.clone()));
                }
            }
        }
    }
    entries.sort();
    let mut out = String::from(
        "/// (package, \"msg\" | \"srv\" | \"action\", type name, definition text)\n\
         pub static BUNDLED: &[(&str, &str, &str, &str)] = &[\n",
    );
    for (pkg, kind, name, path) in &entries {
        let _ = writeln!(
            out,
            "    ({pkg:?}, {kind:?}, {name:?}, include_str!({:?})),",
            path.display().to_string()
        );
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("bundled_interfaces.rs");
    std::fs::write(dest, out).expect("write bundled_interfaces.rs");
}
