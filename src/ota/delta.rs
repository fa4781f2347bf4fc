//! Delta packages (docs/ota.md, Delta packages): a package that carries, for each file
//! that changed since a base version, a binary patch against the base's file, and for
//! each unchanged file only its hash. The installer rebuilds every file into the
//! inactive slot from the active slot and the patches, and checks each against the
//! manifest before the slot can be used.
//!
//! Patches are in the format of the standard `bsdiff`/`bspatch` tools (BSDIFF40: bzip2
//! streams of control, difference and extra data), made and applied by `qbsdiff`. The
//! base file and the patch are memory-mapped and the result is written as it is made, so
//! rebuilding a 40 MB model costs no more heap than installing it whole.

use std::io::{self, Write};
use std::path::Path;

use super::crash_point;
use super::package::{is_safe_relative, Manifest, PackageError};

/// Where `ota pack --delta-from` puts the patches inside a package; the installer
/// removes the folder once the files are rebuilt.
pub const PATCH_DIR: &str = ".delta";

/// The ending of a patch's name.
pub const PATCH_EXT: &str = ".bsdiff";

/// A bsdiff patch that turns `old` into `new`, written to `out`. Returns its size.
pub fn diff(old: &[u8], new: &[u8], out: &mut impl Write) -> io::Result<u64> {
    qbsdiff::Bsdiff::new(old, new)
        .compression_level(9)
        .compare(out)
}

/// The size of the file `patch` makes, from its header.
pub fn target_size(patch: &[u8]) -> io::Result<u64> {
    Ok(qbsdiff::Bspatch::new(patch)?.hint_target_size())
}

/// Applies `patch` to `base`, writing the result to `out`; fails once the result would
/// pass `limit` bytes. Returns the bytes written.
pub fn apply(base: &[u8], patch: &[u8], out: impl Write, limit: u64) -> io::Result<u64> {
    let patcher = qbsdiff::Bspatch::new(patch)?;
    let claimed = patcher.hint_target_size();
    if claimed > limit {
        return Err(io::Error::other(format!(
            "the patch makes a file of {claimed} bytes, over the limit of {limit}"
        )));
    }
    let mut out = Bounded {
        inner: out,
        left: limit,
    };
    patcher.apply(base, &mut out)
}

/// A writer that refuses to go past a number of bytes.
struct Bounded<W> {
    inner: W,
    left: u64,
}

impl<W: Write> Write for Bounded<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::other(
                "the patch writes past the size it declares",
            ));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A file's bytes, memory-mapped (an empty file cannot be mapped and needs no map).
pub enum Mapped {
    Empty,
    Map(memmap2::Mmap),
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Mapped::Empty => &[],
            Mapped::Map(m) => m,
        }
    }
}

/// Maps the regular file at `path` read-only.
pub fn map(path: &Path) -> io::Result<Mapped> {
    let f = std::fs::File::open(path)?;
    if f.metadata()?.len() == 0 {
        return Ok(Mapped::Empty);
    }
    // SAFETY: the files mapped are a slot's files and a package's patches, which nothing
    // writes while an install runs (the installer holds the OTA lock, and slots are
    // written once); a mapping of a file changed underneath would only give wrong bytes,
    // which the hash check after every rebuild refuses.
    #[allow(unsafe_code)]
    let m = unsafe { memmap2::Mmap::map(&f)? };
    Ok(Mapped::Map(m))
}

/// What a rebuild did, for the OTA log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    pub patched: usize,
    pub copied: usize,
    pub bytes: u64,
}

/// Rebuilds into the slot `dest` (where the package was just extracted) every component
/// of `m` that the package carries as a delta, from the same file in `base` (the active
/// slot): patched, or copied when unchanged. Each base file is checked against the hash
/// the manifest gives for it first; a base that does not match is
/// [`PackageError::Base`]. At most `max_bytes` are written. The patches are removed
/// afterwards; the caller checks every component's hash.
pub fn rebuild(
    dest: &Path,
    base: &Path,
    m: &Manifest,
    max_bytes: u64,
) -> Result<Rebuilt, PackageError> {
    let Some(b) = &m.base else {
        return Ok(Rebuilt::default());
    };
    let mut done = Rebuilt::default();
    for c in &m.components {
        let Some(d) = &c.delta else { continue };
        let fail = |reason: String| PackageError::component(c, reason);
        let rel = Path::new(&c.path);
        if !is_safe_relative(rel) {
            return Err(fail("not a plain relative path".into()));
        }
        let target = dest.join(rel);
        if std::fs::symlink_metadata(&target).is_ok() {
            return Err(fail(
                "the package holds this file and a delta for it".into(),
            ));
        }
        let from = base.join(rel);
        let base_err = |what: &str| {
            PackageError::Base(format!(
                "the active slot's {} {what} (this package updates version {})",
                c.path, b.version
            ))
        };
        match std::fs::symlink_metadata(&from) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Err(base_err("is not a regular file")),
            Err(_) => return Err(base_err("is missing")),
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| PackageError::Io(parent.display().to_string(), e))?;
        }
        let left = max_bytes.saturating_sub(done.bytes);
        let too_big = || PackageError::TooBig {
            limit: max_bytes,
            why: "ota.max_extracted_bytes or the free disk space".into(),
        };
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(|e| PackageError::Io(target.display().to_string(), e))?;
        let base_io = |e: io::Error| PackageError::Io(from.display().to_string(), e);
        // The base is read as a stream (an unchanged file is copied in the same pass),
        // so only a patch's base is mapped.
        let size = std::fs::metadata(&from).map_err(base_io)?.len();
        let copy = d.patch.is_none();
        if copy && size > left {
            return Err(too_big());
        }
        let actual = super::package::digests_each(&from, false, &mut |b, _| {
            if copy {
                out.write_all(b)
                    .map_err(|e| PackageError::Io(target.display().to_string(), e))?;
            }
            Ok(())
        })?
        .sha256_hex();
        if !actual.eq_ignore_ascii_case(&d.base_sha256) {
            return Err(base_err(&format!(
                "has sha256 {actual}, not the base's {}",
                d.base_sha256
            )));
        }
        let (written, mode) = match &d.patch {
            Some(p) => {
                let prel = Path::new(p);
                let ppath = dest.join(prel);
                let is_file = std::fs::symlink_metadata(&ppath).map(|m| m.is_file());
                if !is_safe_relative(prel) || !is_file.unwrap_or(false) {
                    return Err(fail(format!(
                        "its patch '{p}' is not a file of the package"
                    )));
                }
                let patch =
                    map(&ppath).map_err(|e| PackageError::Io(ppath.display().to_string(), e))?;
                if target_size(&patch).map_err(|e| fail(format!("patch '{p}': {e}")))? > left {
                    return Err(too_big());
                }
                let old = map(&from).map_err(base_io)?;
                let w = apply(&old, &patch, io::BufWriter::new(&mut out), left)
                    .map_err(|e| fail(format!("patch '{p}' does not apply: {e}")))?;
                (w, mode_of(&ppath))
            }
            None => (size, mode_of(&from)),
        };
        out.sync_all()
            .map_err(|e| PackageError::Io(target.display().to_string(), e))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode & 0o755))
            .map_err(|e| PackageError::Io(target.display().to_string(), e))?;
        done.bytes += written;
        if d.patch.is_some() {
            done.patched += 1;
        } else {
            done.copied += 1;
        }
        crash_point("delta: file rebuilt");
    }
    // The patches are not part of the slot.
    for c in &m.components {
        if let Some(p) = c.delta.as_ref().and_then(|d| d.patch.as_ref()) {
            let _ = std::fs::remove_file(dest.join(p));
        }
    }
    let _ = std::fs::remove_dir_all(dest.join(PATCH_DIR));
    Ok(done)
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode())
        .unwrap_or(0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(old: &[u8], new: &[u8]) -> Vec<u8> {
        let mut patch = Vec::new();
        diff(old, new, &mut patch).unwrap();
        assert_eq!(target_size(&patch).unwrap(), new.len() as u64);
        let mut out = Vec::new();
        apply(old, &patch, &mut out, new.len() as u64).unwrap();
        out
    }

    #[test]
    fn patches_rebuild_the_new_file() {
        let old: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut new = old.clone();
        new[500..600].fill(9);
        new.extend_from_slice(b"tail");
        assert_eq!(roundtrip(&old, &new), new);
        assert_eq!(roundtrip(b"", b"from nothing"), b"from nothing");
        assert_eq!(roundtrip(b"to nothing", b""), b"");
    }

    #[test]
    fn a_patch_cannot_write_past_its_limit() {
        let mut patch = Vec::new();
        diff(b"abc", &[7u8; 1000], &mut patch).unwrap();
        let e = apply(b"abc", &patch, Vec::new(), 999).unwrap_err();
        assert!(e.to_string().contains("over the limit"), "{e}");
        // Garbage is an error, not a panic.
        assert!(apply(b"abc", b"BSDIFF40 not really", Vec::new(), 10).is_err());
        assert!(apply(b"abc", &patch[..patch.len() / 2], Vec::new(), 1000).is_err());
    }
}
