//! The package download: streamed to disk, resumed with HTTP Range after a broken
//! connection and after an agent restart (only if the server's size and validator did
//! not change), bounded retries with backoff, no retry on 4xx, a stall timeout, an
//! optional bandwidth cap, and HTTPS unless configured otherwise.

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

/// What is known about a partial download, saved beside it for resuming.
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
        // A local file (`ota install ./pkg.tar.gz`): copy it.
        let n = std::fs::copy(path, dest).map_err(|e| io(Path::new(path), e))?;
        progress(n, Some(n));
        return Ok(n);
    }
    if url.starts_with("http://") && !settings.allow_http {
        return Err(DownloadError::Refused(format!(
            "{url} is plain HTTP; use HTTPS, or set ota.allow_http = true for a trusted network"
        )));
    }
    if !url.starts_with("https://") && !url.starts_with("http://") {
        return Err(DownloadError::Refused(format!(
            "'{url}' is not an http(s) URL or a file"
        )));
    }
    let part = dest.with_extension("part");
    let mut info: PartInfo = std::fs::read(info_path(&part))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if info.url != url {
        // A partial file of another URL is no use.
        let _ = std::fs::remove_file(&part);
        info = PartInfo {
            url: url.to_owned(),
            ..PartInfo::default()
        };
    }
    let mut attempt = 0u32;
    let mut last_error = String::new();
    loop {
        if cancel.is_cancelled() {
            return Err(DownloadError::Stopped);
        }
        if attempt > settings.retries {
            return Err(DownloadError::GaveUp {
                attempts: attempt,
                last: last_error,
            });
        }
        if attempt > 0 {
            let wait =
                Duration::from_millis(500u64.saturating_mul(1 << attempt.min(6)).min(30_000));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => return Err(DownloadError::Stopped),
            }
        }
        attempt += 1;
        match attempt_once(http, url, &part, &mut info, settings, progress, cancel).await {
            Ok(n) => {
                std::fs::rename(&part, dest).map_err(|e| io(dest, e))?;
                let _ = std::fs::remove_file(info_path(&part));
                return Ok(n);
            }
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(e)) => {
                tracing::debug!(attempt, error = %e, "Download interrupted; resuming.");
                last_error = e;
            }
        }
    }
}

enum Attempt {
    Fatal(DownloadError),
    Retry(String),
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
        .map_err(|e| Attempt::Retry(e.to_string()))?;
    let status = resp.status().as_u16();
    if (400..500).contains(&status) && status != 408 && status != 429 {
        return Err(Attempt::Fatal(DownloadError::Status {
            status,
            url: url.to_owned(),
        }));
    }
    if !(200..300).contains(&status) {
        return Err(Attempt::Retry(format!("server answered {status}")));
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
                url: url.to_owned(),
                ..PartInfo::default()
            };
            return Err(Attempt::Retry(
                "the file changed on the server; starting over".into(),
            ));
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
        url: url.to_owned(),
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
        let chunk = match next {
            Err(_) => {
                let _ = f.sync_data();
                return Err(Attempt::Retry(format!(
                    "no data for {}s",
                    settings.stall_timeout.as_secs()
                )));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                let _ = f.sync_data();
                return Err(Attempt::Retry(e.to_string()));
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
            return Err(Attempt::Retry(format!("got {offset} of {t} bytes")));
        }
    }
    Ok(offset)
}
