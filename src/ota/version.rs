//! Comparing package versions as the platforms write them: "1.4.0", "v1.5.0-rc1",
//! "41811020", "2026.11.22". Numeric parts compare as numbers, other parts as text.

use std::cmp::Ordering;

fn parts(v: &str) -> Vec<&str> {
    v.trim()
        .trim_start_matches(['v', 'V'])
        .split(['.', '-', '_', '+'])
        .filter(|p| !p.is_empty())
        .collect()
}

pub fn compare(a: &str, b: &str) -> Ordering {
    let (pa, pb) = (parts(a), parts(b));
    for i in 0..pa.len().max(pb.len()) {
        let o = match (pa.get(i), pb.get(i)) {
            (Some(x), Some(y)) => match (x.parse::<u64>(), y.parse::<u64>()) {
                (Ok(nx), Ok(ny)) => nx.cmp(&ny),
                // A release (number) is newer than a pre-release (text) at the same place.
                (Ok(_), Err(_)) => Ordering::Greater,
                (Err(_), Ok(_)) => Ordering::Less,
                (Err(_), Err(_)) => x.cmp(y),
            },
            // "1.2" < "1.2.1", but "1.2" > "1.2-rc1".
            (Some(x), None) => {
                if x.parse::<u64>().is_ok() {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (None, Some(y)) => {
                if y.parse::<u64>().is_ok() {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (None, None) => Ordering::Equal,
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

pub fn newer(candidate: &str, than: &str) -> bool {
    compare(candidate, than) == Ordering::Greater
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
