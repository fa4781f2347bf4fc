//! Comparing package versions as the platforms write them: "1.4.0", "v1.5.0-rc1",
//! "41811020", "2026.11.22", "2.0.0+build.7".
//!
//! The rules are Semantic Versioning's, made to accept what is not strict semver:
//! - a leading `v` is ignored, and so is build metadata (from `+`);
//! - the release part (before the first `-`) is compared number by number, missing
//!   numbers counting as 0: "1.0" and "1.0.0" are the same version;
//! - a pre-release ("1.2.0-rc1", after the first `-`) is older than its release;
//!   pre-releases compare identifier by identifier (dot-separated; numbers as numbers,
//!   below text; a shorter list first when all else is equal);
//! - a release part that is not all numbers ("1.4b") compares part by part, numbers
//!   as numbers and above text.
//!
//! Written here (the `semver` crate refuses "1.0" and "41811020"); the rules are
//! tested below, including as properties (a total order).

use std::cmp::Ordering;

/// One dot-separated part: numbers compare as numbers and sort above text.
fn cmp_part(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Greater,
        (Err(_), Ok(_)) => Ordering::Less,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// (release parts, pre-release identifiers) of a version string.
fn split(v: &str) -> (Vec<&str>, Vec<&str>) {
    let v = v.trim();
    let v = v.strip_prefix(['v', 'V']).unwrap_or(v);
    let v = v.split('+').next().unwrap_or_default();
    let (release, pre) = match v.split_once('-') {
        Some((r, p)) => (r, Some(p)),
        None => (v, None),
    };
    let release = release
        .split(['.', '_'])
        .filter(|p| !p.is_empty())
        .collect();
    let pre = pre
        .map(|p| p.split('.').filter(|p| !p.is_empty()).collect())
        .unwrap_or_default();
    (release, pre)
}

pub fn compare(a: &str, b: &str) -> Ordering {
    let ((ra, pa), (rb, pb)) = (split(a), split(b));
    for i in 0..ra.len().max(rb.len()) {
        let o = cmp_part(
            ra.get(i).copied().unwrap_or("0"),
            rb.get(i).copied().unwrap_or("0"),
        );
        if o != Ordering::Equal {
            return o;
        }
    }
    match (pa.is_empty(), pb.is_empty()) {
        (true, true) => Ordering::Equal,
        // A release is newer than any of its pre-releases.
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => {
            for (x, y) in pa.iter().zip(&pb) {
                // In a pre-release, numbers sort below text (semver's rule).
                let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
            pa.len().cmp(&pb.len())
        }
    }
}

pub fn newer(candidate: &str, than: &str) -> bool {
    compare(candidate, than) == Ordering::Greater
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn orders_versions() {
        assert!(newer("1.5.0", "1.4.9"));
        assert!(newer("1.10.0", "1.9.0"));
        assert!(newer("v2.0", "1.99"));
        assert!(newer("1.2.1", "1.2"));
        assert!(newer("1.2", "1.2-rc1"));
        assert!(newer("41811021", "41811020"));
        assert!(!newer("1.4.0", "1.4.0"));
        assert!(!newer("1.4.0", "v1.4.0"));
        assert_eq!(compare("2026.11.22", "2026.2.1"), Ordering::Greater);
    }

    #[test]
    fn trailing_zeros_pre_releases_and_build_metadata() {
        assert_eq!(compare("1.0", "1.0.0"), Ordering::Equal);
        assert_eq!(compare("1", "1.0.0"), Ordering::Equal);
        assert!(newer("1.2.0", "1.2.0-rc1"));
        assert!(newer("1.2.0-rc2", "1.2.0-rc1"));
        assert!(newer("1.2.0-rc.10", "1.2.0-rc.9"));
        assert!(newer("1.2.0-beta", "1.2.0-alpha"));
        assert!(newer("1.2.0-alpha.1", "1.2.0-alpha"));
        assert!(newer("1.2.0-alpha", "1.2.0-1"));
        assert!(newer("1.2.1-rc1", "1.2.0"));
        assert_eq!(compare("2.0.0+build.7", "2.0.0"), Ordering::Equal);
        assert_eq!(compare("2.0.0+a", "2.0.0+b"), Ordering::Equal);
        assert!(newer("2.0.0-rc1+x", "2.0.0-beta+y"));
    }

    fn version() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(0u32..20, 1..4),
            proptest::option::of(proptest::collection::vec(
                prop_oneof!["[a-z]{1,3}", (0u32..12).prop_map(|n| n.to_string())],
                1..3,
            )),
            proptest::option::of("[a-z0-9]{1,4}"),
        )
            .prop_map(|(rel, pre, build)| {
                let mut s = rel.iter().map(u32::to_string).collect::<Vec<_>>().join(".");
                if let Some(p) = pre {
                    s = format!("{s}-{}", p.join("."));
                }
                if let Some(b) = build {
                    s = format!("{s}+{b}");
                }
                s
            })
    }

    proptest! {
        #[test]
        fn the_order_is_total_and_consistent(a in version(), b in version(), c in version()) {
            prop_assert_eq!(compare(&a, &b), compare(&b, &a).reverse());
            prop_assert_eq!(compare(&a, &a), Ordering::Equal);
            if compare(&a, &b) != Ordering::Greater && compare(&b, &c) != Ordering::Greater {
                prop_assert_ne!(compare(&a, &c), Ordering::Greater);
            }
        }

        #[test]
        fn any_text_compares_without_panic(a in ".{0,20}", b in ".{0,20}") {
            let _ = compare(&a, &b);
        }
    }
}
