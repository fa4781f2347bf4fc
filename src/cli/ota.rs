//! `edge-agent ota …`: for the technician on the robot (status, install, rollback,
//! confirm, recover) and for package authors (pack, keygen).

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::Failure;
use crate::config::{self, DeviceConfig};
use crate::exit;
use crate::ota::config::{OtaConfig, OtaSettings};
use crate::ota::installer::{Installer, OtaError, OtaEvent, Recovery};
use crate::ota::machine::{Hash, Job, Origin, Phase};
use crate::ota::package::{self, HealthCheck};
use crate::ota::store::LockError;

/// Where the OTA state is: from a configuration file, or a folder given directly.
#[derive(Debug, Clone, clap::Args)]
pub struct Where {
    /// The agent's configuration (its [ota] section and state_dir).
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// The OTA folder itself (slots/, current, journal.json), without a configuration.
    #[arg(long, value_name = "DIR", global = true, conflicts_with = "config")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum OtaCommand {
    /// Slots, versions and the journal's state, as JSON.
    Status {
        #[command(flatten)]
        at: Where,
    },
    /// Install a package (a file or an https:// URL) now, with a progress bar.
    Install {
        /// Package file or URL.
        package: String,
        /// Expected SHA-256 of the package (required for URLs).
        #[arg(long)]
        sha256: Option<String>,
        /// Detached signature (base64); `<package>.sig` is used when absent.
        #[arg(long)]
        signature: Option<String>,
        /// The public key packages must be signed with (base64 or hex, or a file holding
        /// it), for `--state-dir`; with `--config`, `ota.public_key` applies.
        #[arg(long, value_name = "KEY-OR-FILE", conflicts_with = "config")]
        public_key: Option<String>,
        /// The version (read from the package when it is a file).
        #[arg(long)]
        version: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Allow a version that is not newer, or under the anti-rollback floor.
        #[arg(long)]
        force: bool,
        /// Leave the new slot unconfirmed (the running agent confirms it after its soak time).
        #[arg(long)]
        no_confirm: bool,
        #[command(flatten)]
        at: Where,
    },
    /// Go back to the previous slot (an update not yet confirmed).
    Rollback {
        #[command(flatten)]
        at: Where,
    },
    /// Confirm the new slot now.
    Confirm {
        #[command(flatten)]
        at: Where,
    },
    /// Finish or undo an interrupted update (what the agent does when it starts).
    Recover {
        #[command(flatten)]
        at: Where,
    },
    /// Build a package from a folder: manifest, .tar.gz, .sha256 and (with --key) .sig.
    Pack {
        dir: PathBuf,
        #[arg(long)]
        version: String,
        /// Package name (the OTA module).
        #[arg(long, default_value = "detector")]
        name: String,
        /// Private key file: from `ota keygen`, or a PEM private key (ECDSA P-256, RSA,
        /// ed25519) as `openssl genpkey` writes it. The signature goes to `<package>.sig`.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Health check run in the new slot, e.g. "bin/check.sh --quick".
        #[arg(long)]
        health_check: Option<String>,
        #[arg(long, default_value_t = 60)]
        health_timeout: u64,
        #[arg(long)]
        min_agent_version: Option<String>,
        /// Hook run before the inactive slot is touched, e.g. "hooks/pre.sh"; non-zero
        /// refuses the update. Each hook's program is a file of DIR.
        #[arg(long)]
        pre_install: Option<String>,
        /// Hook run in the new slot right after the switch; non-zero rolls back.
        #[arg(long)]
        post_switch: Option<String>,
        /// Hook run in the rejected slot after a rollback.
        #[arg(long)]
        post_rollback: Option<String>,
        #[arg(long, default_value_t = 60)]
        hook_timeout: u64,
        /// Make a delta package against this full package (the version robots run):
        /// unchanged files by hash, changed files as bsdiff patches, new files whole.
        #[arg(long, value_name = "OLD.tar.gz")]
        delta_from: Option<PathBuf>,
        /// Where to write the package (default: the current folder).
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Make a key pair for signing packages.
    Keygen {
        /// Private key file to write (mode 0600); the public key goes to `<out>.pub`.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "ed25519")]
        algorithm: crate::ota::signing::KeyAlgorithm,
    },
}

fn settings(at: &Where) -> Result<OtaSettings, Failure> {
    if let Some(c) = &at.config {
        return config::load(c)
            .map(|s| s.ota)
            .map_err(|e| Failure::usage(e.to_string()));
    }
    let dir = at
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/edge-agent/ota"));
    // Without a configuration: a technician's own network, plain HTTP allowed.
    let cfg = OtaConfig {
        dir: Some(dir),
        allow_http: true,
        ..OtaConfig::default()
    };
    let device = DeviceConfig {
        product_key: "local".into(),
        device_name: "local".into(),
    };
    cfg.resolve(Path::new("/"), &device)
        .map_err(|e| Failure::usage(e.to_string()))
}

fn open(at: &Where) -> Result<Installer, Failure> {
    let s = settings(at)?;
    Installer::open(s).map_err(|e| Failure {
        code: exit::CANTCREAT,
        message: e.to_string(),
    })
}

/// Opens the store and takes its lock: only one process changes slots at a time.
fn open_locked(at: &Where) -> Result<Installer, Failure> {
    let mut inst = open(at)?;
    inst.acquire().map_err(|e| match e {
        OtaError::Lock(LockError::Busy { .. }) => Failure {
            code: exit::TEMPFAIL,
            message: format!("{e}; try again when it has finished"),
        },
        other => Failure {
            code: exit::CANTCREAT,
            message: other.to_string(),
        },
    })?;
    Ok(inst)
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::internal(e.to_string()))
}

/// Reads the manifest from a package file without unpacking it.
fn peek_manifest(path: &Path) -> Result<package::Manifest, Failure> {
    let f = std::fs::File::open(path)
        .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
    let damaged = |e: std::io::Error| {
        Failure::data(format!("{}: the archive is damaged: {e}", path.display()))
    };
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    for e in ar.entries().map_err(damaged)? {
        let mut e = e.map_err(damaged)?;
        if e.path()
            .ok()
            .is_some_and(|p| p == Path::new(package::MANIFEST))
        {
            let mut text = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut text).map_err(damaged)?;
            return serde_json::from_slice(&text)
                .map_err(|e| Failure::data(format!("manifest.json: {e}")));
        }
    }
    Err(Failure::data(format!(
        "{} has no manifest.json",
        path.display()
    )))
}

pub fn run(cmd: OtaCommand) -> Result<(), Failure> {
    // What the installer does (which engine checked a model, a rollback...) goes to
    // stderr; `status` keeps stdout for its JSON.
    crate::logging::init::<crate::logging::NoLayer>(
        "info",
        crate::logging::Scrubber::new(&[]),
        None,
    );
    match cmd {
        OtaCommand::Status { at } => {
            let inst = open(&at)?;
            print_json(&inst.status_json());
            Ok(())
        }
        OtaCommand::Recover { at } => {
            let mut inst = open_locked(&at)?;
            let r = inst
                .recover()
                .map_err(|e| Failure::internal(e.to_string()))?;
            if let Recovery::Resume(job) = r {
                let token = tokio_util::sync::CancellationToken::new();
                runtime()?
                    .block_on(inst.install(job, true, &token))
                    .map_err(|e| Failure::internal(e.to_string()))?;
            }
            print_json(&inst.status_json());
            Ok(())
        }
        OtaCommand::Rollback { at } => {
            let mut inst = open_locked(&at)?;
            inst.recover()
                .map_err(|e| Failure::internal(e.to_string()))?;
            inst.rollback("rolled back by a technician")
                .map_err(|e| Failure::usage(e.to_string()))?;
            print_json(&inst.status_json());
            Ok(())
        }
        OtaCommand::Confirm { at } => {
            let mut inst = open_locked(&at)?;
            inst.recover()
                .map_err(|e| Failure::internal(e.to_string()))?;
            inst.confirm().map_err(|e| Failure::usage(e.to_string()))?;
            print_json(&inst.status_json());
            Ok(())
        }
        OtaCommand::Install {
            package: pkg,
            sha256,
            signature,
            public_key,
            version,
            yes,
            force,
            no_confirm,
            at,
        } => install(
            pkg,
            sha256,
            Signing {
                signature,
                public_key,
            },
            version,
            yes,
            force,
            no_confirm,
            &at,
        ),
        OtaCommand::Pack {
            dir,
            version,
            name,
            key,
            health_check,
            health_timeout,
            min_agent_version,
            pre_install,
            post_switch,
            post_rollback,
            hook_timeout,
            delta_from,
            out,
        } => {
            let key = match &key {
                Some(k) => Some(read_signing_key(k)?),
                None => None,
            };
            let hc = health_check.map(|c| HealthCheck {
                command: c.split_whitespace().map(str::to_owned).collect(),
                timeout_s: health_timeout,
            });
            let hook = |c: Option<String>| {
                c.map(|c| HealthCheck {
                    command: c.split_whitespace().map(str::to_owned).collect(),
                    timeout_s: hook_timeout,
                })
            };
            let opts = package::PackOptions {
                name,
                version,
                health_check: hc,
                min_agent_version,
                hooks: package::Hooks {
                    pre_install: hook(pre_install),
                    post_switch: hook(post_switch),
                    post_rollback: hook(post_rollback),
                },
                key: key.as_ref(),
                delta_from: delta_from.as_deref(),
            };
            let p = package::pack(&dir, &opts, &out).map_err(|e| Failure::usage(e.to_string()))?;
            println!("{}", p.package.display());
            println!("sha256 {}", p.sha256);
            if let Some(b) = &p.manifest.base {
                let (mut patched, mut copied, mut whole) = (0, 0, 0);
                for c in &p.manifest.components {
                    match c.delta.as_ref().map(|d| d.patch.is_some()) {
                        Some(true) => patched += 1,
                        Some(false) => copied += 1,
                        None => whole += 1,
                    }
                }
                println!(
                    "delta from {}: {patched} patched, {copied} unchanged, {whole} whole",
                    b.version
                );
            }
            if let Some(s) = p.signature {
                println!("signature {s}");
            }
            Ok(())
        }
        OtaCommand::Keygen { out, algorithm } => {
            let (private, public) =
                crate::ota::signing::generate(algorithm).map_err(Failure::internal)?;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .map_err(|e| Failure::usage(format!("{}: {e}", out.display())))?;
            f.write_all(private.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| Failure::internal(e.to_string()))?;
            let public_file = PathBuf::from(format!("{}.pub", out.display()));
            std::fs::write(&public_file, format!("{}\n", public.trim_end()))
                .map_err(|e| Failure::usage(format!("{}: {e}", public_file.display())))?;
            println!(
                "private key written to {} (keep it off the robots)",
                out.display()
            );
            println!(
                "public key written to {} (for ota.public_key)",
                public_file.display()
            );
            if !public.contains("-----BEGIN") {
                println!("public key for ota.public_key: {public}");
            }
            Ok(())
        }
    }
}

fn read_signing_key(path: &Path) -> Result<crate::ota::signing::SigningKey, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
    crate::ota::signing::SigningKey::parse(&text)
        .map_err(|e| Failure::usage(format!("{} {e}", path.display())))
}

/// What `install` is told about signatures.
struct Signing {
    signature: Option<String>,
    public_key: Option<String>,
}

/// `--public-key`: the key itself, or a file holding it (PEM keys or certificates, or
/// an ed25519 key in base64 or hex).
fn read_public_key(text: &str) -> Result<crate::ota::signing::Keyring, Failure> {
    let (value, source) = match std::fs::read_to_string(text) {
        Ok(t) => (t, text.to_owned()),
        Err(_) => (text.to_owned(), "--public-key".to_owned()),
    };
    let keys = crate::ota::signing::TrustedKey::parse_all(&value, &source)
        .map_err(|e| Failure::usage(format!("--public-key {text:?} {e}")))?;
    Ok(crate::ota::signing::Keyring { keys })
}

/// The package hash from `<url>.sha256` (as `ota pack` writes it beside the package),
/// for an install from a URL without `--sha256`.
fn hash_beside(inst: &mut Installer, url: &str) -> Result<String, Failure> {
    let sha_url = crate::ota::download::sibling_url(url, ".sha256");
    let refuse = |why: String| {
        Failure::usage(format!(
            "give --sha256 HASH for a package URL: {why}, so the download could not be checked"
        ))
    };
    let http = inst.http().map_err(|e| refuse(e.to_string()))?;
    let text = runtime()?
        .block_on(crate::ota::download::fetch_text(&http, &sha_url))
        .map_err(|e| refuse(format!("no hash beside it ({e})")))?;
    let hash = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refuse(format!(
            "{} does not hold a SHA-256",
            crate::ota::download::redact_url(&sha_url)
        )));
    }
    Ok(hash)
}

#[allow(clippy::too_many_arguments)]
fn install(
    pkg: String,
    sha256: Option<String>,
    signing: Signing,
    version: Option<String>,
    yes: bool,
    force: bool,
    no_confirm: bool,
    at: &Where,
) -> Result<(), Failure> {
    let remote = pkg.starts_with("http://") || pkg.starts_with("https://");
    let local = if remote {
        None
    } else {
        let p = std::fs::canonicalize(&pkg).map_err(|e| Failure::usage(format!("{pkg}: {e}")))?;
        Some(p)
    };
    let version = match (&version, &local) {
        (Some(v), _) => v.clone(),
        (None, Some(p)) => peek_manifest(p)?.version,
        (None, None) => return Err(Failure::usage("give --version for a package URL")),
    };
    let public_key = match &signing.public_key {
        Some(k) => Some(read_public_key(k)?),
        None => None,
    };
    let mut inst = open_locked(at)?;
    if let Some(k) = public_key {
        inst.settings.keys = k;
    }
    if let Recovery::RolledBack(r) = inst
        .recover()
        .map_err(|e| Failure::internal(e.to_string()))?
    {
        eprintln!("note: an earlier update was rolled back: {r}");
    }
    // A URL without a hash: the one beside it, or a refusal before anything is fetched.
    let sha256 = match sha256 {
        Some(h) => Some(h),
        None if remote => Some(hash_beside(&mut inst, &pkg)?),
        None => None,
    };
    if let Some(p) = &local {
        let sig = PathBuf::from(format!("{}.sig", p.display()));
        if inst.settings.keys.is_empty() && sig.exists() {
            eprintln!(
                "note: {} is not checked: no public key is configured (give --public-key, or set ota.public_key)",
                sig.display()
            );
        }
    }
    let signature = signing.signature;
    let job = Job {
        origin: Origin::Cli,
        module: inst.settings.module.clone(),
        version: version.clone(),
        url: local
            .as_ref()
            .map_or(pkg.clone(), |p| p.display().to_string()),
        size: local
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len()),
        hash: sha256.map(Hash::Sha256),
        signature,
        oss: None,
        full: None,
        force,
    };
    // The same package again takes up the interrupted job; different details (a new
    // hash or signature for the same URL) replace it.
    let shown = crate::ota::download::redact_url;
    let same = |j: &Job| shown(&j.url) == shown(&job.url) && j.version == job.version;
    let mut resuming = inst.journal.phase.busy() && inst.journal.phase.job().is_some_and(same);
    if resuming {
        let differs = inst.journal.phase.job().is_some_and(|o| {
            (job.hash.is_some() && o.hash != job.hash)
                || (job.signature.is_some() && o.signature != job.signature)
        });
        if differs {
            inst.abandon("replaced by a new request for the same package")
                .map_err(|e| Failure::usage(e.to_string()))?;
            resuming = false;
        }
    }
    let job = if resuming {
        inst.journal.phase.job().cloned().unwrap_or(job)
    } else {
        job
    };
    if !resuming {
        if let Err(reason) = inst.admit(&job) {
            return Err(Failure::data(format!(
                "not installing: {reason} (use --force to override)"
            )));
        }
        if inst.journal.phase.busy() {
            return Err(Failure {
                code: exit::TEMPFAIL,
                message: format!(
                    "another update is under way ({}); `ota recover` finishes or undoes it",
                    inst.journal.phase.name()
                ),
            });
        }
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(Failure::usage(
                "not a terminal: add --yes to install without asking",
            ));
        }
        let slot = inst.store.active().map_or("a", |s| s.other().name());
        eprint!(
            "Install {} {} from {} into slot {slot}{}? [y/N] ",
            job.module,
            job.version,
            shown(&job.url),
            inst.current_version()
                .map(|v| format!(" (installed: {v})"))
                .unwrap_or_default()
        );
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .map_err(|e| Failure::internal(e.to_string()))?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err(Failure::usage("not installed"));
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let mut inst = inst.with_events(tx);
    let bar = indicatif::ProgressBar::new(job.size.unwrap_or(0));
    if std::io::stderr().is_terminal() {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let token = tokio_util::sync::CancellationToken::new();
    crate::logging::set_progress_bar(Some(bar.clone()));
    let again = format!("edge-agent ota install {}", shown(&pkg));
    let result = runtime()?.block_on(async {
        let run = inst.install(job, !no_confirm, &token);
        tokio::pin!(run);
        let mut stopping = false;
        loop {
            tokio::select! {
                r = &mut run => break r,
                Some(e) = rx.recv() => show(&bar, &e),
                _ = tokio::signal::ctrl_c(), if !stopping => {
                    stopping = true;
                    token.cancel();
                    bar.println("Stopping. A download stops here and resumes where it stopped when the same install is run again; a step under way on the slot finishes first.");
                }
            }
        }
    });
    while let Ok(e) = rx.try_recv() {
        show(&bar, &e);
    }
    crate::logging::set_progress_bar(None);
    bar.finish_and_clear();
    let phase = result.map_err(|e| Failure::usage(e.to_string()))?;
    print_json(&inst.status_json());
    match phase {
        Phase::Committed { .. } | Phase::SwitchedPendingConfirm { .. } => Ok(()),
        Phase::Failed { reason, .. } | Phase::RolledBack { reason, .. } => {
            Err(Failure::data(format!("update not installed: {reason}")))
        }
        Phase::Downloading { .. } => Err(Failure {
            code: exit::TEMPFAIL,
            message: format!(
                "stopped while downloading; what was downloaded is kept, and `{again} …` with the same arguments resumes it"
            ),
        }),
        other => Err(Failure::internal(format!(
            "update stopped in state {}",
            other.name()
        ))),
    }
}

fn show(bar: &indicatif::ProgressBar, e: &OtaEvent) {
    match e {
        OtaEvent::Progress {
            desc, bytes, total, ..
        } => {
            if let Some(t) = total {
                bar.set_length(*t);
            }
            if *bytes > 0 {
                bar.set_position(*bytes);
            }
            bar.set_message(desc.clone());
        }
        OtaEvent::Deferred { reason, .. } => bar.println(format!("switch deferred: {reason}")),
        OtaEvent::Switched { .. } => bar.set_message("switched"),
        OtaEvent::Committed { job, .. } => bar.println(format!(
            "installed and committed {} {}",
            job.module, job.version
        )),
        OtaEvent::Failed { reason, .. } => bar.println(format!("failed: {reason}")),
        OtaEvent::RolledBack { reason, .. } => bar.println(format!("rolled back: {reason}")),
    }
}
