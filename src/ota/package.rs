//! Update packages: a `.tar.gz` holding `manifest.json` and the files it lists. Made by
//! `edge-agent ota pack`, checked against the hash (and signature) the cloud
//! gives, and unpacked into a slot with everything hostile refused: absolute paths,
//! `..`, links that leave the slot, device files, setuid files, entries given twice, and
//! archives that expand past the configured limits.
//!
//! Links are judged by where they really lead, not by their text: a link's target is
//! followed through the links already in the slot (as the kernel would), and once every
//! entry is written each link is followed again through the finished tree, since a link
//! written later can change where an earlier one leads. A hard link may only name a
//! regular file this package wrote.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Component as PathPart, Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::crash_point;
use super::machine::Hash;

pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// e.g. "detector-model"
    pub name: String,
    /// Path inside the package (and the slot).
    pub path: String,
    pub sha256: String,
    /// "onnx-model" for models the health check loads and runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// In a delta package: the file is rebuilt from the same path in the active slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
}

/// How a delta package's file is made from the base's file at the same path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delta {
    /// The base file's SHA-256: the rebuild refuses any other.
    pub base_sha256: String,
    /// The bsdiff patch inside the package; none when the file is unchanged (copied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
}

/// The version a delta package updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Program and arguments, run in the new slot's folder.
    pub command: Vec<String>,
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

const fn default_timeout() -> u64 {
    60
}

/// Programs the installer runs at points of an install (docs/ota.md, Hooks). Each one's
/// program is a file of the package, so nothing runs that was not verified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Before the inactive slot is touched; non-zero refuses the update. Runs alone
    /// (the program's file only) from a folder beside the slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_install: Option<HealthCheck>,
    /// In the new slot, right after the switch; non-zero rolls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_switch: Option<HealthCheck>,
    /// In the rejected slot, after a rollback; its result is logged only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_rollback: Option<HealthCheck>,
}

impl Hooks {
    pub fn is_empty(&self) -> bool {
        self.pre_install.is_none() && self.post_switch.is_none() && self.post_rollback.is_none()
    }

    /// (name, hook) of each one set.
    pub fn each(&self) -> impl Iterator<Item = (&'static str, &HealthCheck)> {
        [
            ("pre_install", &self.pre_install),
            ("post_switch", &self.post_switch),
            ("post_rollback", &self.post_rollback),
        ]
        .into_iter()
        .filter_map(|(n, h)| h.as_ref().map(|h| (n, h)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_agent_version: Option<String>,
    pub components: Vec<Component>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Hooks::is_empty")]
    pub hooks: Hooks,
    /// Set in a delta package: the version whose files it patches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Base>,
}

impl Manifest {
    /// Every hook's program is a file the manifest lists (so it was verified with the
    /// package), named by its path inside the package.
    pub fn check_hooks(&self) -> Result<(), String> {
        for (name, h) in self.hooks.each() {
            let Some(prog) = h.command.first() else {
                return Err(format!("the {name} hook's command is empty"));
            };
            if !self.components.iter().any(|c| &c.path == prog) {
                return Err(format!(
                    "the {name} hook runs '{prog}', which is not a file of the package"
                ));
            }
        }
        Ok(())
    }

    /// A delta package's rules: a base version when (and only when) files are deltas;
    /// every patch a plain path of its own, not a component's.
    pub fn check_delta(&self) -> Result<(), String> {
        let deltas = self.components.iter().filter(|c| c.delta.is_some()).count();
        match (&self.base, deltas) {
            (None, 0) | (Some(_), _) => {}
            (None, _) => return Err("files are deltas but no base version is named".into()),
        }
        for c in &self.components {
            let Some(p) = c.delta.as_ref().and_then(|d| d.patch.as_ref()) else {
                continue;
            };
            if !is_safe_relative(Path::new(p)) {
                return Err(format!("the patch '{p}' is not a plain relative path"));
            }
            if self.components.iter().any(|o| &o.path == p) {
                return Err(format!("the patch '{p}' is also a component"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("package {kind} is {actual}, expected {expected}")]
    HashMismatch {
        kind: &'static str,
        expected: String,
        actual: String,
    },
    #[error("signature check failed: {0}")]
    Signature(String),
    #[error("refused entry '{path}': {reason}")]
    Refused { path: String, reason: String },
    #[error("package expands past the limit of {limit} bytes ({why})")]
    TooBig { limit: u64, why: String },
    #[error("package has more than {limit} files")]
    TooManyFiles { limit: u64 },
    #[error("manifest.json: {0}")]
    Manifest(String),
    #[error("component '{name}' ({path}): {reason}")]
    Component {
        name: String,
        path: String,
        reason: String,
    },
    #[error("the archive is damaged: {0}")]
    Archive(String),
    /// A delta package whose base is not what the robot has.
    #[error("not this robot's base: {0}")]
    Base(String),
}

impl PackageError {
    /// A component that is wrong, and why.
    pub fn component(c: &Component, reason: String) -> PackageError {
        PackageError::Component {
            name: c.name.clone(),
            path: c.path.clone(),
            reason,
        }
    }
}

fn io(path: &Path, e: std::io::Error) -> PackageError {
    PackageError::Io(path.display().to_string(), e)
}

/// Limits on what a package may expand to.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_bytes: u64,
    /// Which limit `max_bytes` is, for the error.
    pub why: String,
    pub max_files: u64,
    /// The most a delta package's rebuilt files may take: `ota.max_extracted_bytes` and
    /// the free space, not the package's size (a small patch makes a large file).
    pub max_rebuilt: u64,
}

/// Room kept free on the state folder's disk by an extraction.
pub const DISK_RESERVE: u64 = 64 << 20;

impl Limits {
    /// The smallest of: the configured most, `expansion` times the package's size (plus
    /// 1 MiB), and the free space of `dir`'s disk less [`DISK_RESERVE`].
    pub fn for_package(
        package_len: u64,
        max_bytes: u64,
        expansion: u64,
        dir: &Path,
        max_files: u64,
    ) -> Limits {
        let mut l = Limits {
            max_bytes,
            why: "ota.max_extracted_bytes".into(),
            max_files,
            max_rebuilt: max_bytes,
        };
        let by_ratio = package_len
            .saturating_mul(expansion)
            .saturating_add(1 << 20);
        if by_ratio < l.max_bytes {
            l.max_bytes = by_ratio;
            l.why = format!("{expansion} times the package's size, ota.max_expansion");
        }
        if let Ok(st) = rustix::fs::statvfs(dir) {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            let room = free.saturating_sub(DISK_RESERVE);
            l.max_rebuilt = l.max_rebuilt.min(room);
            if room < l.max_bytes {
                l.max_bytes = room;
                l.why = format!(
                    "the free space on {}'s disk, less {} MiB",
                    dir.display(),
                    DISK_RESERVE >> 20
                );
            }
        }
        l
    }
}

/// A file's digests, from one pass over it.
#[derive(Debug, Clone)]
pub struct Digests {
    pub sha256: [u8; 32],
    /// Only when asked for (platforms that give an MD5).
    pub md5: Option<String>,
}

impl Digests {
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// Reads `path` once for its SHA-256 (and MD5 with `md5`), telling `progress` the bytes
/// read so far.
pub fn digests(
    path: &Path,
    md5: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<Digests, PackageError> {
    digests_each(path, md5, &mut |_, done| {
        progress(done);
        Ok(())
    })
}

/// What [`digests_each`] hands each block read to.
pub type OnBlock<'a> = dyn FnMut(&[u8], u64) -> Result<(), PackageError> + 'a;

/// As [`digests`], handing each block read, and the bytes read so far, to `block` (which
/// may copy it elsewhere in the same pass).
pub fn digests_each(
    path: &Path,
    md5: bool,
    block: &mut OnBlock<'_>,
) -> Result<Digests, PackageError> {
    use md5::Digest as _;
    let mut f = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let mut sha = Sha256::new();
    let mut m = md5.then(md5::Md5::new);
    let mut buf = vec![0u8; 256 * 1024];
    let mut done = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| io(path, e))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        if let Some(m) = m.as_mut() {
            m.update(&buf[..n]);
        }
        done += n as u64;
        block(&buf[..n], done)?;
    }
    Ok(Digests {
        sha256: sha.finalize().into(),
        md5: m.map(|m| hex::encode(m.finalize())),
    })
}

pub fn sha256_file(path: &Path) -> Result<(String, [u8; 32]), PackageError> {
    let d = digests(path, false, &mut |_| {})?;
    Ok((d.sha256_hex(), d.sha256))
}

/// Checks the package file against the cloud's hash (case-insensitive hex).
pub fn check_hash(path: &Path, expected: &Hash) -> Result<(), PackageError> {
    let d = digests(path, matches!(expected, Hash::Md5(_)), &mut |_| {})?;
    check_digest(&d, expected)
}

/// Checks digests already made against the cloud's hash.
pub fn check_digest(d: &Digests, expected: &Hash) -> Result<(), PackageError> {
    let actual = match expected {
        Hash::Sha256(_) => d.sha256_hex(),
        Hash::Md5(_) => d.md5.clone().unwrap_or_default(),
    };
    if !actual.eq_ignore_ascii_case(expected.hex().trim()) {
        return Err(PackageError::HashMismatch {
            kind: expected.name(),
            expected: expected.hex().to_owned(),
            actual,
        });
    }
    Ok(())
}

/// Decodes a key or signature written as base64 or hex.
pub fn decode_b64_or_hex(text: &str) -> Option<Vec<u8>> {
    let t = text.trim();
    if t.len().is_multiple_of(2) && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex::decode(t).ok();
    }
    base64::engine::general_purpose::STANDARD.decode(t).ok()
}

/// The public key of a private seed.
pub fn public_key(private_seed: &[u8; 32]) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(private_seed)
        .verifying_key()
        .to_bytes()
}

pub(crate) fn is_safe_relative(p: &Path) -> bool {
    !p.as_os_str().is_empty()
        && p.components()
            .all(|c| matches!(c, PathPart::Normal(_) | PathPart::CurDir))
}

/// The most links followed while resolving one path (the kernel's limit is 40).
const MAX_LINK_HOPS: usize = 40;

/// Where the link at `entry` (relative to `root`) pointing at `target` really leads,
/// following the links that exist under `root` now, as a path relative to `root`; an
/// error says why it leaves the root. A part that does not exist yet is taken as a
/// folder name (the kernel would stop there; nothing is followed through it).
fn resolve_link(root: &Path, entry: &Path, target: &Path) -> Result<PathBuf, String> {
    let mut at: Vec<OsString> = entry
        .parent()
        .map(|p| {
            p.components()
                .filter_map(|c| match c {
                    PathPart::Normal(n) => Some(n.to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    // The parts still to walk, last one first.
    let mut todo: Vec<OsString> = Vec::new();
    let push_target = |todo: &mut Vec<OsString>, t: &Path| -> Result<(), String> {
        if t.is_absolute() {
            return Err(format!("'{}' is an absolute path", t.display()));
        }
        let parts: Vec<OsString> = t
            .components()
            .filter_map(|c| match c {
                PathPart::Normal(n) => Some(n.to_owned()),
                PathPart::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect();
        todo.extend(parts.into_iter().rev());
        Ok(())
    };
    push_target(&mut todo, target)?;
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            if at.pop().is_none() {
                return Err("it leads out of the slot".into());
            }
            continue;
        }
        at.push(part);
        let here: PathBuf = root.join(at.iter().collect::<PathBuf>());
        if std::fs::symlink_metadata(&here).is_ok_and(|m| m.file_type().is_symlink()) {
            hops += 1;
            if hops > MAX_LINK_HOPS {
                return Err("too many levels of links".into());
            }
            let next = std::fs::read_link(&here).map_err(|e| e.to_string())?;
            // A link's target is relative to the folder holding it.
            at.pop();
            push_target(&mut todo, &next)?;
        }
    }
    Ok(at.iter().collect())
}

/// A path as written in the archive, without `.` parts: the key of the entries seen.
fn normalized(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| matches!(c, PathPart::Normal(_)))
        .collect()
}

/// The decompressed stream went past the expansion limit.
#[derive(Debug, thiserror::Error)]
#[error("the package expands past its limit")]
struct ExpansionLimit;

/// Counts bytes read from the decompressor, so a gzip bomb stops at the limit.
struct Counted<R> {
    inner: R,
    read: u64,
    limit: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(std::io::Error::other(ExpansionLimit));
        }
        Ok(n)
    }
}

/// Counts the package bytes read, for progress.
struct Consumed<R, F> {
    inner: R,
    read: u64,
    progress: F,
}

impl<R: Read, F: FnMut(u64)> Read for Consumed<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        (self.progress)(self.read);
        Ok(n)
    }
}

/// Unpacks `package` into the empty folder `dest`, refusing anything hostile, and
/// checks every component's hash. Returns the manifest.
pub fn extract(package: &Path, dest: &Path, limits: Limits) -> Result<Manifest, PackageError> {
    extract_with(package, dest, limits, None, &mut |_| {})
}

/// [`extract`], telling `progress` how many bytes of the package file were read. A delta
/// package's files are rebuilt from `base` (the active slot's folder) before the check.
pub fn extract_with(
    package: &Path,
    dest: &Path,
    limits: Limits,
    base: Option<&Path>,
    progress: &mut dyn FnMut(u64),
) -> Result<Manifest, PackageError> {
    let f = std::fs::File::open(package).map_err(|e| io(package, e))?;
    let consumed = Consumed {
        inner: f,
        read: 0,
        progress,
    };
    // Headers and padding count too: allow a little over the payload limit.
    let counted = Counted {
        inner: flate2::read::GzDecoder::new(std::io::BufReader::new(consumed)),
        read: 0,
        limit: limits
            .max_bytes
            .saturating_add(limits.max_bytes / 8)
            .saturating_add(1 << 20),
    };
    let mut ar = tar::Archive::new(counted);
    let mut total: u64 = 0;
    let mut files: u64 = 0;
    // Every entry's path, the regular files among them, and the symbolic links.
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut regular: HashSet<PathBuf> = HashSet::new();
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    let entries = ar
        .entries()
        .map_err(|e| PackageError::Archive(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| archive_error(e, &limits))?;
        let path = entry
            .path()
            .map_err(|e| PackageError::Archive(e.to_string()))?
            .into_owned();
        let shown = path.display().to_string();
        let refuse = |reason: &str| PackageError::Refused {
            path: shown.clone(),
            reason: reason.to_owned(),
        };
        if path.is_absolute() {
            return Err(refuse("absolute path"));
        }
        if path.components().any(|c| matches!(c, PathPart::ParentDir)) {
            return Err(refuse("'..' in the path"));
        }
        if !is_safe_relative(&path) {
            return Err(refuse("not a plain relative path"));
        }
        files += 1;
        if files > limits.max_files {
            return Err(PackageError::TooManyFiles {
                limit: limits.max_files,
            });
        }
        let kind = entry.header().entry_type();
        let key = normalized(&path);
        let is_dir = kind == tar::EntryType::Directory;
        if !seen.insert(key.clone()) && !is_dir {
            return Err(refuse("the package holds this path twice"));
        }
        let target = dest.join(&path);
        // Never write through a link the package made.
        let mut walk = dest.to_path_buf();
        for part in path
            .parent()
            .map(|p| p.components().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            walk.push(part);
            if std::fs::symlink_metadata(&walk).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(refuse("goes through a link"));
            }
        }
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(refuse("a link of the package is already at this path"));
        }
        let mode = entry.header().mode().unwrap_or(0o644);
        if mode & 0o6000 != 0 && !is_dir {
            return Err(refuse("setuid or setgid file"));
        }
        match kind {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target).map_err(|e| io(&target, e))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry
                    .header()
                    .size()
                    .map_err(|e| PackageError::Archive(e.to_string()))?;
                total = total.saturating_add(size);
                if total > limits.max_bytes {
                    return Err(PackageError::TooBig {
                        limit: limits.max_bytes,
                        why: limits.why.clone(),
                    });
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
                }
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(|e| io(&target, e))?;
                let copied = std::io::copy(&mut (&mut entry).take(size), &mut out)
                    .map_err(|e| archive_error(e, &limits))?;
                if copied != size {
                    return Err(PackageError::Archive(format!("'{shown}' is cut short")));
                }
                out.sync_all().map_err(|e| io(&target, e))?;
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode & 0o755))
                    .map_err(|e| io(&target, e))?;
                regular.insert(key);
                crash_point("extract: file written");
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(|e| PackageError::Archive(e.to_string()))?
                    .ok_or_else(|| refuse("link without a target"))?
                    .into_owned();
                if kind == tar::EntryType::Symlink {
                    if let Err(why) = resolve_link(dest, &path, &link) {
                        return Err(refuse(&format!(
                            "link to '{}' leaves the slot: {why}",
                            link.display()
                        )));
                    }
                } else if !is_safe_relative(&link) {
                    // Hard link targets are relative to the archive root.
                    return Err(refuse(&format!(
                        "hard link to '{}' leaves the slot",
                        link.display()
                    )));
                } else if !regular.contains(&normalized(&link)) {
                    return Err(refuse(&format!(
                        "hard link to '{}', which is not a file this package wrote",
                        link.display()
                    )));
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
                }
                if kind == tar::EntryType::Symlink {
                    std::os::unix::fs::symlink(&link, &target).map_err(|e| io(&target, e))?;
                    links.push((path.clone(), link));
                } else {
                    std::fs::hard_link(dest.join(&link), &target).map_err(|e| io(&target, e))?;
                    regular.insert(key);
                }
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(refuse("device or fifo"));
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => return Err(refuse(&format!("unsupported entry type {other:?}"))),
        }
    }
    // A link written later can change where an earlier one leads: follow each again
    // through the finished tree.
    for (path, link) in &links {
        if let Err(why) = resolve_link(dest, path, link) {
            return Err(PackageError::Refused {
                path: path.display().to_string(),
                reason: format!("link to '{}' leaves the slot: {why}", link.display()),
            });
        }
    }
    let mpath = dest.join(MANIFEST);
    let text = std::fs::read(&mpath)
        .map_err(|_| PackageError::Manifest("missing from the package".into()))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| PackageError::Manifest(e.to_string()))?;
    manifest.check_delta().map_err(PackageError::Manifest)?;
    if let Some(b) = &manifest.base {
        let Some(base) = base else {
            return Err(PackageError::Base(format!(
                "a delta package for version {} needs an installed version to patch",
                b.version
            )));
        };
        super::delta::rebuild(dest, base, &manifest, limits.max_rebuilt)?;
    }
    check_components(dest, &manifest)?;
    Ok(manifest)
}

fn archive_error(e: std::io::Error, limits: &Limits) -> PackageError {
    if e.get_ref().is_some_and(|i| i.is::<ExpansionLimit>()) {
        PackageError::TooBig {
            limit: limits.max_bytes,
            why: limits.why.clone(),
        }
    } else {
        PackageError::Archive(e.to_string())
    }
}

/// Every component is present, a regular file inside the slot, and has its hash.
pub fn check_components(dir: &Path, manifest: &Manifest) -> Result<(), PackageError> {
    if manifest.components.is_empty() {
        return Err(PackageError::Manifest("lists no components".into()));
    }
    for c in &manifest.components {
        let fail = |reason: String| PackageError::component(c, reason);
        let rel = Path::new(&c.path);
        if !is_safe_relative(rel) {
            return Err(fail("not a plain relative path".into()));
        }
        let p = dir.join(rel);
        let meta = std::fs::symlink_metadata(&p)
            .map_err(|_| fail("listed in the manifest but missing".into()))?;
        if !meta.is_file() {
            return Err(fail("not a regular file".into()));
        }
        let (actual, _) = sha256_file(&p)?;
        if !actual.eq_ignore_ascii_case(&c.sha256) {
            return Err(fail(format!(
                "sha256 is {actual}, the manifest says {}",
                c.sha256
            )));
        }
    }
    Ok(())
}

/// What `ota pack` made.
#[derive(Debug)]
pub struct Packed {
    pub package: PathBuf,
    pub sha256: String,
    pub signature: Option<String>,
    pub manifest: Manifest,
}

/// What `ota pack` is told besides the folder.
#[derive(Default)]
pub struct PackOptions<'a> {
    pub name: String,
    pub version: String,
    pub health_check: Option<HealthCheck>,
    pub min_agent_version: Option<String>,
    pub hooks: Hooks,
    pub key: Option<&'a super::signing::SigningKey>,
    /// Make a delta package against this (full) package: unchanged files by hash,
    /// changed ones as patches, new ones whole.
    pub delta_from: Option<&'a Path>,
}

/// What goes into the archive besides the manifest.
enum Entry {
    /// A file of the folder, whole.
    File(PathBuf),
    /// A patch: its path in the package, its bytes, the new file's mode.
    Patch(String, Vec<u8>, u32),
}

/// The base package of a delta, unpacked into a temporary folder.
struct BaseTree {
    dir: tempfile::TempDir,
    manifest: Manifest,
}

fn open_base(package: &Path, name: &str) -> Result<BaseTree, PackageError> {
    let dir = tempfile::tempdir().map_err(|e| io(package, e))?;
    let limits = Limits {
        max_bytes: u64::MAX / 4,
        why: "none".into(),
        max_files: u64::MAX,
        max_rebuilt: 0,
    };
    let manifest = extract(package, dir.path(), limits).map_err(|e| match e {
        PackageError::Base(_) => PackageError::Manifest(format!(
            "{} is itself a delta package; a delta is made against a full package",
            package.display()
        )),
        e => e,
    })?;
    if manifest.name != name {
        return Err(PackageError::Manifest(format!(
            "{} is a package of '{}', not '{name}'",
            package.display(),
            manifest.name
        )));
    }
    Ok(BaseTree { dir, manifest })
}

fn mode(path: &Path) -> Result<u32, PackageError> {
    use std::os::unix::fs::PermissionsExt as _;
    Ok(std::fs::metadata(path)
        .map_err(|e| io(path, e))?
        .permissions()
        .mode()
        & 0o7777)
}

/// Builds `<out_dir>/<name>-<version>.tar.gz` from every file under `src`, with a
/// manifest (and `.sha256`, `.sig` files beside it).
pub fn pack(src: &Path, opts: &PackOptions, out_dir: &Path) -> Result<Packed, PackageError> {
    let (name, version, key) = (opts.name.as_str(), opts.version.as_str(), opts.key);
    let mut files = Vec::new();
    collect(src, src, &mut files)?;
    files.sort();
    files.retain(|p| p != Path::new(MANIFEST));
    let base = match opts.delta_from {
        Some(p) => Some(open_base(p, name)?),
        None => None,
    };
    // Hook programs always travel whole: pre_install runs from the package alone.
    let hook_programs: HashSet<&str> = opts
        .hooks
        .each()
        .filter_map(|(_, h)| h.command.first().map(String::as_str))
        .collect();
    let mut components = Vec::new();
    let mut entries = Vec::new();
    for rel in &files {
        let file = src.join(rel);
        let (sha, _) = sha256_file(&file)?;
        let path = rel.to_string_lossy().replace('\\', "/");
        let stem = rel
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("file")
            .to_owned();
        let mut delta = None;
        let old = base.as_ref().and_then(|b| {
            b.manifest
                .components
                .iter()
                .find(|c| c.path == path)
                .map(|c| (b.dir.path().join(rel), c.sha256.clone()))
        });
        match old {
            Some((old_file, old_sha)) if !hook_programs.contains(path.as_str()) => {
                let new_mode = mode(&file)?;
                if old_sha.eq_ignore_ascii_case(&sha) && mode(&old_file)? == new_mode {
                    delta = Some(Delta {
                        base_sha256: old_sha,
                        patch: None,
                    });
                } else {
                    let a = std::fs::read(&old_file).map_err(|e| io(&old_file, e))?;
                    let b = std::fs::read(&file).map_err(|e| io(&file, e))?;
                    let mut patch = Vec::new();
                    super::delta::diff(&a, &b, &mut patch).map_err(|e| io(&file, e))?;
                    // A patch that saves little is not worth the rebuild.
                    if (patch.len() as u64) < (b.len() as u64) * 9 / 10 {
                        let at = format!(
                            "{}/{path}{}",
                            super::delta::PATCH_DIR,
                            super::delta::PATCH_EXT
                        );
                        delta = Some(Delta {
                            base_sha256: old_sha,
                            patch: Some(at.clone()),
                        });
                        entries.push(Entry::Patch(at, patch, new_mode));
                    } else {
                        entries.push(Entry::File(rel.clone()));
                    }
                }
            }
            _ => entries.push(Entry::File(rel.clone())),
        }
        components.push(Component {
            name: stem,
            kind: if path.ends_with(".onnx") {
                Some("onnx-model".to_owned())
            } else if path == super::selfupdate::AGENT_PATH {
                Some(super::selfupdate::AGENT_KIND.to_owned())
            } else {
                None
            },
            path,
            sha256: sha,
            delta,
        });
    }
    let manifest = Manifest {
        name: name.to_owned(),
        version: version.to_owned(),
        min_agent_version: opts.min_agent_version.clone(),
        components,
        health_check: opts.health_check.clone(),
        hooks: opts.hooks.clone(),
        base: base.as_ref().map(|b| Base {
            version: b.manifest.version.clone(),
        }),
    };
    manifest.check_hooks().map_err(PackageError::Manifest)?;
    manifest.check_delta().map_err(PackageError::Manifest)?;
    std::fs::create_dir_all(out_dir).map_err(|e| io(out_dir, e))?;
    let package = out_dir.join(format!("{name}-{version}.tar.gz"));
    {
        let f = std::fs::File::create(&package).map_err(|e| io(&package, e))?;
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        tar.mode(tar::HeaderMode::Deterministic);
        let mtext = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| PackageError::Manifest(e.to_string()))?;
        let mut h = tar::Header::new_gnu();
        h.set_size(mtext.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, MANIFEST, &mtext[..])
            .map_err(|e| io(&package, e))?;
        for e in &entries {
            match e {
                Entry::File(rel) => tar
                    .append_path_with_name(src.join(rel), rel)
                    .map_err(|e| io(&src.join(rel), e))?,
                Entry::Patch(at, bytes, mode) => {
                    let mut h = tar::Header::new_gnu();
                    h.set_size(bytes.len() as u64);
                    h.set_mode(*mode);
                    h.set_cksum();
                    tar.append_data(&mut h, at, &bytes[..])
                        .map_err(|e| io(&package, e))?;
                }
            }
        }
        let gz = tar.into_inner().map_err(|e| io(&package, e))?;
        let mut f = gz.finish().map_err(|e| io(&package, e))?;
        f.flush().map_err(|e| io(&package, e))?;
    }
    let (sha256, digest) = sha256_file(&package)?;
    let sha_file = package.with_extension("gz.sha256");
    std::fs::write(
        &sha_file,
        format!(
            "{sha256}  {}\n",
            package
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
        ),
    )
    .map_err(|e| io(&sha_file, e))?;
    let mut signature = None;
    if let Some(k) = key {
        use base64::Engine as _;
        let sig = k.sign(&digest).map_err(PackageError::Signature)?;
        let text = base64::engine::general_purpose::STANDARD.encode(&sig);
        let sig_file = package.with_extension("gz.sig");
        // As OpenSSL writes it (DER or raw bytes); ed25519 as base64 text.
        let body = if k.is_binary() {
            sig
        } else {
            format!("{text}\n").into_bytes()
        };
        std::fs::write(&sig_file, body).map_err(|e| io(&sig_file, e))?;
        signature = Some(text);
    }
    Ok(Packed {
        package,
        sha256,
        signature,
        manifest,
    })
}

/// One file of a package, at most `max` bytes, without extracting the rest (the
/// pre-install hook runs before the slot is touched).
pub fn read_member(package: &Path, member: &str, max: u64) -> Result<Vec<u8>, PackageError> {
    let f = std::fs::File::open(package).map_err(|e| io(package, e))?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)));
    let entries = ar
        .entries()
        .map_err(|e| PackageError::Archive(e.to_string()))?;
    let want = normalized(Path::new(member));
    for entry in entries {
        let entry = entry.map_err(|e| PackageError::Archive(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| PackageError::Archive(e.to_string()))?
            .into_owned();
        if normalized(&path) != want || entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let mut data = Vec::new();
        std::io::Read::take(entry, max.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| PackageError::Archive(e.to_string()))?;
        if data.len() as u64 > max {
            return Err(PackageError::Refused {
                path: member.to_owned(),
                reason: format!("larger than {max} bytes"),
            });
        }
        return Ok(data);
    }
    Err(PackageError::Refused {
        path: member.to_owned(),
        reason: "not in the package".into(),
    })
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PackageError> {
    for e in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let e = e.map_err(|e| io(dir, e))?;
        let p = e.path();
        let ft = e.file_type().map_err(|e| io(&p, e))?;
        if ft.is_dir() {
            collect(root, &p, out)?;
        } else if ft.is_file() {
            out.push(p.strip_prefix(root).unwrap_or(&p).to_path_buf());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_inside_and_outside() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let inside =
            |entry: &str, target: &str| resolve_link(r, Path::new(entry), Path::new(target));
        assert_eq!(inside("a/b/link", "../c").unwrap(), Path::new("a/c"));
        assert_eq!(
            inside("link", "models/x.onnx").unwrap(),
            Path::new("models/x.onnx")
        );
        assert!(inside("link", "../etc/passwd").is_err());
        assert!(inside("a/link", "../../x").is_err());
        assert!(inside("a/link", "/etc/passwd").is_err());
        assert_eq!(inside("x/up", "..").unwrap(), Path::new(""));
    }

    #[test]
    fn links_are_followed_through_the_tree_not_read_as_text() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir(r.join("x")).unwrap();
        std::os::unix::fs::symlink("..", r.join("x/up")).unwrap();
        // As text "x/up/.." is "x": really it is the slot's parent.
        let e = resolve_link(r, Path::new("l1"), Path::new("x/up/..")).unwrap_err();
        assert!(e.contains("out of the slot"), "{e}");
        // A loop of links ends with an error, not a hang.
        std::os::unix::fs::symlink("loop2", r.join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", r.join("loop2")).unwrap();
        let e = resolve_link(r, Path::new("l"), Path::new("loop1/f")).unwrap_err();
        assert!(e.contains("too many levels"), "{e}");
        // Through a link to a deeper folder, ".." is that folder's parent.
        std::fs::create_dir_all(r.join("d/e")).unwrap();
        std::os::unix::fs::symlink("d/e", r.join("de")).unwrap();
        assert_eq!(
            resolve_link(r, Path::new("l"), Path::new("de/../f")).unwrap(),
            Path::new("d/f")
        );
    }

    #[test]
    fn pack_extract_and_sign() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("models")).unwrap();
        std::fs::write(src.path().join("models/det.onnx"), b"model bytes").unwrap();
        std::fs::write(src.path().join("detect.toml"), b"conf = 0.25\n").unwrap();
        let out = tempfile::tempdir().unwrap();
        let seed = [7u8; 32];
        let key = super::super::signing::SigningKey::Ed25519(seed);
        let opts = PackOptions {
            name: "detector".into(),
            version: "1.5.0".into(),
            key: Some(&key),
            ..Default::default()
        };
        let p = pack(src.path(), &opts, out.path()).unwrap();
        assert_eq!(p.manifest.components.len(), 2);
        assert_eq!(p.manifest.components[1].kind.as_deref(), Some("onnx-model"));
        let (_, digest) = sha256_file(&p.package).unwrap();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let trusting = |seed: &[u8; 32]| super::super::signing::Keyring {
            keys: super::super::signing::TrustedKey::parse_all(&b64.encode(public_key(seed)), "t")
                .unwrap(),
        };
        let sig = p.signature.as_ref().unwrap().as_bytes();
        trusting(&seed).verify(&digest, sig).unwrap();
        assert!(trusting(&[8u8; 32]).verify(&digest, sig).is_err());
        check_hash(&p.package, &Hash::Sha256(p.sha256.to_uppercase())).unwrap();
        assert!(matches!(
            check_hash(&p.package, &Hash::Sha256("00".into())),
            Err(PackageError::HashMismatch { .. })
        ));
        let dest = tempfile::tempdir().unwrap();
        let m = extract(
            &p.package,
            dest.path(),
            Limits {
                max_bytes: 1 << 20,
                why: "test".into(),
                max_files: 10,
                max_rebuilt: 1 << 20,
            },
        )
        .unwrap();
        assert_eq!(m.version, "1.5.0");
        assert_eq!(
            std::fs::read(dest.path().join("models/det.onnx")).unwrap(),
            b"model bytes"
        );
    }
}
