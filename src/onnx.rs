//! The ONNX runtime, shared by the detector and the OTA model check: which library is
//! loaded, the tract fallback, and the options every session gets.
//!
//! ONNX Runtime is loaded at run time (no link-time dependency): from `[onnx] library`,
//! else `ORT_DYLIB_PATH`, else `libonnxruntime.so` on the loader's search path. Where
//! none is found, the pure-Rust tract backend stands in behind the same API, with one
//! warning that says how to install ONNX Runtime. The choice is made once per process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};
use serde::Deserialize;

/// `[onnx]`: which ONNX Runtime library to load, and how many threads a model may use.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OnnxConfig {
    /// Path to `libonnxruntime.so`; `ORT_DYLIB_PATH` or the loader's search path otherwise.
    pub library: Option<PathBuf>,
    /// Threads per inference (0: ONNX Runtime's default, one per core).
    #[serde(default)]
    pub threads: usize,
}

/// The most threads one inference may be given: beyond it ONNX Runtime spends its time
/// starting threads (10,000 never finished loading a model).
pub const MAX_THREADS: usize = 256;

/// Why a thread count is refused, if it is.
pub fn threads_out_of_range(threads: usize) -> Option<String> {
    (threads > MAX_THREADS).then(|| format!("must be between 0 (one per core) and {MAX_THREADS}"))
}

/// Which engine runs the models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    OnnxRuntime { library: PathBuf, version: String },
    Tract,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::OnnxRuntime { library, version } => {
                write!(f, "ONNX Runtime {version} ({})", library.display())
            }
            Backend::Tract => f.write_str("tract (pure Rust)"),
        }
    }
}

pub struct Runtime {
    pub backend: Backend,
    env: ort::environment::Environment,
    threads: usize,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The process's runtime, set up on first use with `config` (later calls get the same one).
pub fn runtime(config: &OnnxConfig) -> Result<&'static Runtime, String> {
    RUNTIME
        .get_or_init(|| Runtime::start(config))
        .as_ref()
        .map_err(Clone::clone)
}

/// The library to try, and whether it was asked for explicitly (a missing explicit
/// library is an error, not a reason to fall back).
fn wanted_library(config: &OnnxConfig) -> (PathBuf, bool) {
    if let Some(p) = &config.library {
        return (p.clone(), true);
    }
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), true),
        _ => (PathBuf::from("libonnxruntime.so"), false),
    }
}

impl Runtime {
    fn start(config: &OnnxConfig) -> Result<Runtime, String> {
        let (path, explicit) = wanted_library(config);
        let backend = match load_onnxruntime(&path) {
            Ok((api, version)) => {
                ort::set_api(api);
                Backend::OnnxRuntime {
                    library: path,
                    version,
                }
            }
            Err(e) if explicit => return Err(e),
            Err(e) => {
                tracing::warn!(reason = %e,
                    "No ONNX Runtime library found; models run on the slower built-in tract engine. Install ONNX Runtime (libonnxruntime.so 1.24 or newer) and set [onnx] library or ORT_DYLIB_PATH."
                );
                ort::set_api(ort_tract::api());
                Backend::Tract
            }
        };
        let env = ort::init()
            .with_name("edge-agent")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("cannot start {backend}: {e}"))?;
        tracing::info!(backend = %backend, "ONNX runtime ready.");
        Ok(Runtime {
            backend,
            env,
            threads: config.threads,
        })
    }

    /// A session for the model at `path`, built once and reused by the caller.
    pub fn session(&self, path: &Path) -> Result<Session, String> {
        let mut b = Session::builder(&self.env).map_err(|e| e.to_string())?;
        if self.threads > 0 {
            b = b
                .with_intra_threads(self.threads)
                .map_err(|e| e.to_string())?;
        }
        b.commit_from_file(path)
            .map_err(|e| format!("cannot load {}: {e}", path.display()))
    }
}

/// Opens the library and takes its API table (`OrtGetApiBase()->GetApi`). The library
/// stays loaded for the life of the process.
#[allow(unsafe_code)]
fn load_onnxruntime(path: &Path) -> Result<(ort::sys::OrtApi, String), String> {
    // SAFETY: loading ONNX Runtime runs its initialisers, which have no preconditions.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
        // The loader's own reason (dlerror) is the error's source.
        let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
        format!("cannot load ONNX Runtime from {}: {why}", path.display())
    })?;
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime release.
    let get_base = unsafe {
        lib.get::<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase>(b"OrtGetApiBase\0")
    }
    .map_err(|_| format!("{} is not ONNX Runtime (no OrtGetApiBase)", path.display()))?;
    // SAFETY: the base is a static table inside the library, which is never unloaded.
    unsafe {
        let base = get_base();
        if base.is_null() {
            return Err(format!(
                "{}: OrtGetApiBase returned nothing",
                path.display()
            ));
        }
        let version = std::ffi::CStr::from_ptr(((*base).GetVersionString)())
            .to_string_lossy()
            .into_owned();
        let api = ((*base).GetApi)(ort::sys::ORT_API_VERSION);
        if api.is_null() {
            return Err(format!(
                "ONNX Runtime {version} at {} is too old: edge-agent needs API {} (1.{} or newer)",
                path.display(),
                ort::sys::ORT_API_VERSION,
                ort::sys::ORT_API_VERSION
            ));
        }
        Ok((std::ptr::read(api), version))
    }
}

/// Loads the model and runs it once on zeros of its input shapes (dynamic sizes as 1,
/// image-like sizes as 64): what the OTA health check asks of a new model.
pub fn smoke_test(rt: &Runtime, path: &Path) -> Result<(), String> {
    let mut session = rt.session(path)?;
    let mut inputs = Vec::new();
    for input in session.inputs() {
        let ValueType::Tensor { ty, shape, .. } = input.dtype() else {
            return Err(format!("input {} is not a tensor", input.name()));
        };
        let dims: Vec<usize> = shape
            .iter()
            .enumerate()
            .map(|(i, &d)| match d {
                d if d > 0 => d as usize,
                _ if i >= 2 => 64,
                _ => 1,
            })
            .collect();
        let n: usize = dims.iter().product();
        let value: ort::value::DynValue = match ty {
            TensorElementType::Float32 => Tensor::from_array((dims, vec![0f32; n]))
                .map_err(|e| e.to_string())?
                .into_dyn(),
            TensorElementType::Int64 => Tensor::from_array((dims, vec![0i64; n]))
                .map_err(|e| e.to_string())?
                .into_dyn(),
            TensorElementType::Uint8 => Tensor::from_array((dims, vec![0u8; n]))
                .map_err(|e| e.to_string())?
                .into_dyn(),
            other => {
                return Err(format!(
                    "input {} has element type {other:?}, which the check cannot feed",
                    input.name()
                ))
            }
        };
        inputs.push((input.name().to_owned(), value));
    }
    let outputs = session
        .run(inputs)
        .map_err(|e| format!("inference failed: {e}"))?;
    for (name, value) in outputs.iter() {
        if let Ok((_, data)) = value.try_extract_tensor::<f32>() {
            if data.iter().any(|x| !x.is_finite()) {
                return Err(format!("output {name} is not finite on zero input"));
            }
        }
    }
    Ok(())
}
