//! The package download: streamed to disk, resumed with HTTP Range after a broken
//! connection and after an agent restart (only if the server's size and validator did
//! not change), bounded retries with backoff, no retry on 4xx, a stall timeout, an
//! optional bandwidth cap, and HTTPS unless configured otherwise.
//!
//! An attempt that brought data ([`PROGRESS`] or more) gives back the whole retry
//! budget: on a link that drops every few megabytes the download goes on for as long as
//! it keeps advancing. URLs appear in messages and files without their query string
//! and user information ([`redact_url`]): presigned OSS/S3 URLs carry their
//! credentials there.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::crash_point;

#[derive(Debug, Clone)]
pub struct DownloadSettings {
    pub retries: u32,
    pub stall_timeout: Duration,
    /// Bytes per second; 0 for no cap.
    pub max_rate: u64,
    pub allow_http: bool,
    pub max_bytes: u64,
    /// Sign every request for a package in OSS (a fresh Date each time).
    pub oss: Option<std::sync::Arc<super::oss::OssAccess>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("the server answered {status} for {url}")]
    Status { status: u16, url: String },
    #[error("{0}")]
    Refused(String),
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: String },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("the package is {size} bytes, more than the limit of {limit}")]
    TooBig { size: u64, limit: u64 },
    #[error("stopped")]
    Stopped,
}

/// An attempt that brought at least this much resets the retry budget and backoff.
pub const PROGRESS: u64 = 64 * 1024;

/// A URL as it may be shown, logged, reported or written down: without user
/// information, query string (tokens and signatures of presigned URLs) or fragment.
pub fn redact_url(url: &str) -> String {
    let cut = url.find(['?', '#']).unwrap_or(url.len());
    let base = &url[..cut];
    let hidden = if cut < url.len() { "?…" } else { "" };
    match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or(authority);
            format!("{scheme}://{host}{path}{hidden}")
        }
        None => format!("{base}{hidden}"),
    }
}

/// The URL of a file beside `url`'s: `suffix` appended to its path, before any query
/// string (`pkg.tar.gz?x` -> `pkg.tar.gz.sig?x`).
pub fn sibling_url(url: &str, suffix: &str) -> String {
    let cut = url.find(['?', '#']).unwrap_or(url.len());
    format!("{}{suffix}{}", &url[..cut], &url[cut..])
}

/// A small text file (a signature, a hash) from `url`: a local path or file:// URL, or
/// HTTP(S). Errors name the URL redacted.
pub async fn fetch_text(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let body = fetch_small(http, url).await?;
    String::from_utf8(body).map_err(|_| format!("{} is not text", redact_url(url)))
}

/// A small file beside a package (a signature, which OpenSSL writes as binary DER, or a
/// hash), from a URL or a local path; at most 64 KiB.
pub async fn fetch_small(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    if let Some(path) = url
        .strip_prefix("file://")
        .or_else(|| (!url.contains("://")).then_some(url))
    {
        return std::fs::read(path).map_err(|e| format!("{path}: {e}"));
    }
    let shown = redact_url(url);
    let r = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{shown}: {}", describe(e)))?;
    if !r.status().is_success() {
        return Err(format!("{shown} answered {}", r.status().as_u16()));
    }
    let body = r
        .bytes()
        .await
        .map_err(|e| format!("{shown}: {}", describe(e)))?;
    if body.len() > 64 * 1024 {
        return Err(format!(
            "{shown} is {} bytes, too long for a signature or hash",
            body.len()
        ));
    }
    Ok(body.to_vec())
}

/// A reqwest error as a sentence: its causes, without the URL (which may carry a
/// token).
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text = format!("{text}: {t}");
        }
        source = s.source();
    }
    text
}

fn mb(bytes: u64) -> String {
    if bytes >= 1_000_000 {
        format!("{:.1} MB", bytes as f64 / 1e6)
    } else {
        format!("{bytes} bytes")
    }
}

/// What is known about a partial download, saved beside it for resuming. The URL is
/// kept redacted: a new presigned URL for the same file still resumes (the server's
/// ETag or Last-Modified decides whether the bytes are the same).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PartInfo {
    url: String,
    total: Option<u64>,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// Progress callback: (bytes so far, total if known).
pub type Progress<'a> = &'a mut (dyn FnMut(u64, Option<u64>) + Send);

/// An HTTP client with rustls on the ring provider (system roots, or `ca_file`).
pub fn client(tls: Option<Arc<rustls::ClientConfig>>) -> Result<reqwest::Client, String> {
    let mut config = match tls {
        Some(c) => (*c).clone(),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .connect_timeout(Duration::from_secs(20))
        .build()
        .map_err(|e| e.to_string())
}

fn io(p: &Path, e: std::io::Error) -> DownloadError {
    DownloadError::Io(p.display().to_string(), e)
}

fn info_path(part: &Path) -> PathBuf {
    part.with_extension("part.json")
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Downloads `url` to `dest` (through `dest.part`), resuming what an earlier attempt or
/// process left. `cancel` stops it (the partial file stays for later).
pub async fn download(
    http: &reqwest::Client,
    url: &str,
    dest: &Path,
    settings: &DownloadSettings,
    progress: Progress<'_>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<u64, DownloadError> {
    if let Some(path) = url
        .strip_prefix("file://")
        .or_else(|| (!url.contains("://")).then_some(url))
    {
        // A local file (`ota install ./pkg.tar.gz`): copy it, durably (a power cut must
        // not leave a package that passes for complete).
        let n = std::fs::copy(path, dest).map_err(|e| io(Path::new(path), e))?;
        std::fs::File::open(dest)
            .and_then(|f| f.sync_all())
            .map_err(|e| io(dest, e))?;
        if let Some(dir) = dest.parent() {
            super::store::sync_dir(dir)
                .map_err(|e| DownloadError::Io(dir.display().to_string(), e.source))?;
        }
        progress(n, Some(n));
        return Ok(n);
    }
    let shown = redact_url(url);
    if url.starts_with("http://") && !settings.allow_http {
        return Err(DownloadError::Refused(format!(
            "{shown} is plain HTTP; use HTTPS, or set ota.allow_http = true for a trusted network"
        )));
    }
    if !url.starts_with("https://") && !url.starts_with("http://") {
        return Err(DownloadError::Refused(format!(
            "'{shown}' is not an http(s) URL or a file"
        )));
    }
    let part = dest.with_extension("part");
    let mut info: PartInfo = std::fs::read(info_path(&part))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if info.url != shown {
        // A partial file of another file is no use.
        let _ = std::fs::remove_file(&part);
        info = PartInfo {
            url: shown.clone(),
            ..PartInfo::default()
        };
    }
    // Attempts in a row that brought (almost) nothing; the backoff grows with them.
    let mut failures = 0u32;
    let mut attempts = 0u32;
    let mut last_error = String::new();
    loop {
        if cancel.is_cancelled() {
            return Err(DownloadError::Stopped);
        }
        if failures > settings.retries {
            return Err(DownloadError::GaveUp {
                attempts,
                last: last_error,
            });
        }
        if attempts > 0 {
            let wait =
                Duration::from_millis(500u64.saturating_mul(1 << failures.min(6)).min(30_000));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => return Err(DownloadError::Stopped),
            }
        }
        attempts += 1;
        match attempt_once(http, url, &part, &mut info, settings, progress, cancel).await {
            Ok(n) => {
                std::fs::rename(&part, dest).map_err(|e| io(dest, e))?;
                let _ = std::fs::remove_file(info_path(&part));
                // The rename is durable only once the folder is.
                if let Some(dir) = dest.parent() {
                    super::store::sync_dir(dir)
                        .map_err(|e| DownloadError::Io(dir.display().to_string(), e.source))?;
                }
                return Ok(n);
            }
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry { reason, progressed }) => {
                if progressed >= PROGRESS {
                    failures = 0;
                } else {
                    failures += 1;
                }
                tracing::debug!(attempts, failures, error = %reason, "Download interrupted; resuming.");
                last_error = reason;
            }
        }
    }
}

enum Attempt {
    Fatal(DownloadError),
    /// Worth another attempt; `progressed` bytes came in this one.
    Retry {
        reason: String,
        progressed: u64,
    },
}

fn retry(reason: impl Into<String>) -> Attempt {
    Attempt::Retry {
        reason: reason.into(),
        progressed: 0,
    }
}

async fn attempt_once(
    http: &reqwest::Client,
    url: &str,
    part: &Path,
    info: &mut PartInfo,
    settings: &DownloadSettings,
    progress: Progress<'_>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<u64, Attempt> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = http.get(url);
    if let Some(oss) = &settings.oss {
        for (name, value) in oss.headers(&super::oss::http_date_now()) {
            req = req.header(name, value);
        }
    }
    let resuming = have > 0 && (info.etag.is_some() || info.last_modified.is_some());
    if resuming {
        req = req.header("Range", format!("bytes={have}-"));
        // The server sends the rest only if the file is still the same one.
        if let Some(v) = info.etag.as_ref().or(info.last_modified.as_ref()) {
            req = req.header("If-Range", v.clone());
        }
    }
    let resp = req
        .send()
        .await
        .map_err(|e| retry(format!("cannot reach the server: {}", describe(e))))?;
    let status = resp.status().as_u16();
    if (400..500).contains(&status) && status != 408 && status != 429 {
        return Err(Attempt::Fatal(DownloadError::Status {
            status,
            url: redact_url(url),
        }));
    }
    if !(200..300).contains(&status) {
        return Err(retry(format!("the server answered {status}")));
    }
    let etag = header(&resp, "etag");
    let last_modified = header(&resp, "last-modified");
    let (mut offset, total) = if status == 206 {
        let total = header(&resp, "content-range")
            .and_then(|r| r.rsplit('/').next().and_then(|t| t.parse::<u64>().ok()));
        if total.is_some() && info.total.is_some() && total != info.total {
            // The file changed on the server: start again.
            let _ = std::fs::remove_file(part);
            *info = PartInfo {
                url: redact_url(url),
                ..PartInfo::default()
            };
            return Err(retry("the file changed on the server; starting over"));
        }
        (have, total.or(info.total))
    } else {
        // A full answer: the server ignored the range or the file changed. From zero.
        (0, resp.content_length())
    };
    if let Some(t) = total {
        if t > settings.max_bytes {
            return Err(Attempt::Fatal(DownloadError::TooBig {
                size: t,
                limit: settings.max_bytes,
            }));
        }
    }
    *info = PartInfo {
        url: redact_url(url),
        total,
        etag,
        last_modified,
    };
    let info_file = info_path(part);
    let _ = std::fs::write(&info_file, serde_json::to_vec(info).unwrap_or_default());
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(part)
        .map_err(|e| Attempt::Fatal(io(part, e)))?;
    f.set_len(offset).map_err(|e| Attempt::Fatal(io(part, e)))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| Attempt::Fatal(io(part, e)))?;
    progress(offset, total);
    let mut stream = resp.bytes_stream();
    let started = Instant::now();
    let start_offset = offset;
    loop {
        let next = tokio::select! {
            n = tokio::time::timeout(settings.stall_timeout, stream.next()) => n,
            _ = cancel.cancelled() => {
                let _ = f.sync_data();
                return Err(Attempt::Fatal(DownloadError::Stopped));
            }
        };
        let at = || match total {
            Some(t) => format!("{} of {}", mb(offset), mb(t)),
            None => mb(offset),
        };
        let chunk = match next {
            Err(_) => {
                let _ = f.sync_data();
                return Err(Attempt::Retry {
                    reason: format!(
                        "no data for {}s at {}",
                        settings.stall_timeout.as_secs(),
                        at()
                    ),
                    progressed: offset - start_offset,
                });
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                let _ = f.sync_data();
                // reqwest says "error decoding response body" for a connection that
                // closed early: what the technician needs is where it stopped.
                tracing::debug!(error = %describe(e), "The download's connection broke.");
                return Err(Attempt::Retry {
                    reason: format!("the connection dropped at {}", at()),
                    progressed: offset - start_offset,
                });
            }
            Ok(Some(Ok(c))) => c,
        };
        f.write_all(&chunk)
            .map_err(|e| Attempt::Fatal(io(part, e)))?;
        let before = offset;
        offset += chunk.len() as u64;
        // One crash point per 16 KiB written, however the network cut the data into
        // reads (so the points of an install are the same in every run).
        for _ in before / 16_384..offset / 16_384 {
            crash_point("download: 16 KiB written");
        }
        if offset > settings.max_bytes {
            return Err(Attempt::Fatal(DownloadError::TooBig {
                size: offset,
                limit: settings.max_bytes,
            }));
        }
        progress(offset, total);
        if settings.max_rate > 0 {
            let expected =
                Duration::from_secs_f64((offset - start_offset) as f64 / settings.max_rate as f64);
            let elapsed = started.elapsed();
            if expected > elapsed {
                tokio::time::sleep(expected - elapsed).await;
            }
        }
    }
    f.sync_data().map_err(|e| Attempt::Fatal(io(part, e)))?;
    if let Some(t) = total {
        if offset != t {
            return Err(Attempt::Retry {
                reason: format!("the connection ended at {} of {}", mb(offset), mb(t)),
                progressed: offset - start_offset,
            });
        }
    }
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_url("https://bucket.oss-cn-shanghai.aliyuncs.com/pkg/v2.tar.gz?OSSAccessKeyId=AK&Expires=1&Signature=abc%2B"),
            "https://bucket.oss-cn-shanghai.aliyuncs.com/pkg/v2.tar.gz?…"
        );
        assert_eq!(
            redact_url("https://user:pw@host:8443/a/b?x=1#frag"),
            "https://host:8443/a/b?…"
        );
        assert_eq!(redact_url("http://h/p.tar.gz"), "http://h/p.tar.gz");
        assert_eq!(redact_url("/tmp/p.tar.gz"), "/tmp/p.tar.gz");
        assert_eq!(redact_url("https://h?token=s"), "https://h?…");
    }

    #[test]
    fn sibling_files_keep_the_query() {
        assert_eq!(
            sibling_url("https://h/p.tar.gz?sig=1", ".sig"),
            "https://h/p.tar.gz.sig?sig=1"
        );
        assert_eq!(
            sibling_url("/tmp/p.tar.gz", ".sha256"),
            "/tmp/p.tar.gz.sha256"
        );
    }
}
