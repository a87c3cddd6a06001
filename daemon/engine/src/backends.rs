//! Which llama.cpp backends this process runs on.
//!
//! A default build links one CPU backend into the binary (llama-cpp-sys-2's AVX2 baseline). A
//! build with the `dynamic-backends` feature (what the packages ship) has its backends as
//! loadable modules instead: one CPU backend per x86 feature level and, in GPU packages, the GPU
//! backend. Then the caller must choose and [`load_modules`] before the first model; this crate
//! never lets ggml load every module itself (`ggml_backend_load_all`), because ggml picks a CPU
//! variant by CPUID alone and can pick one the kernel does not allow (AMX without permission
//! dies with SIGILL).

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::EngineError;

/// Whether this build loads its backends as modules at run time.
pub const DYNAMIC: bool = cfg!(feature = "dynamic-backends");

/// Where the build put the backend modules (a `dynamic-backends` build run from the build
/// tree); `None` in a default build.
pub fn build_dir() -> Option<&'static Path> {
    llama_cpp_sys_2::BACKENDS_DIR.map(Path::new)
}

/// A backend module loaded into this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedModule {
    pub path: PathBuf,
    /// The name the module registered under, such as `CPU` or `CUDA`.
    pub name: String,
}

static LOADED: OnceLock<Vec<LoadedModule>> = OnceLock::new();

/// Loads these backend modules, once per process, before any model. Fails for a default build
/// (its backend is built in), on a second call, and for a file ggml does not accept (not a
/// backend, or one whose own CPU check says no).
pub fn load_modules(paths: &[PathBuf]) -> Result<&'static [LoadedModule], EngineError> {
    if !DYNAMIC {
        return Err(EngineError::Backend(
            "this build has its llama.cpp backend built in; there are no modules to load".into(),
        ));
    }
    if crate::backend_started() {
        return Err(EngineError::Backend(
            "llama.cpp is already initialised; backend modules must be loaded before the first model".into(),
        ));
    }
    let mut loaded = Vec::with_capacity(paths.len());
    for path in paths {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
            EngineError::Backend(format!("{}: the path contains a NUL byte", path.display()))
        })?;
        // SAFETY: `c` is a valid NUL-terminated string that outlives the call; ggml copies what
        // it keeps. The call dlopens the file and runs its registration function.
        let reg = unsafe { llama_cpp_sys_2::ggml_backend_load(c.as_ptr()) };
        if reg.is_null() {
            return Err(EngineError::Backend(format!(
                "llama.cpp did not load the backend module {} (see the ggml log lines before this one)",
                path.display()
            )));
        }
        // SAFETY: `reg` is the non-null registration ggml just returned; its name is a static
        // NUL-terminated string owned by the module, which stays loaded for the process.
        let name = unsafe { CStr::from_ptr(llama_cpp_sys_2::ggml_backend_reg_name(reg)) };
        loaded.push(LoadedModule {
            path: path.clone(),
            name: name.to_string_lossy().into_owned(),
        });
    }
    LOADED.set(loaded).map_err(|_| {
        EngineError::Backend("backend modules were already loaded in this process".into())
    })?;
    Ok(LOADED.get().map_or(&[], Vec::as_slice))
}

/// The modules [`load_modules`] loaded, if it ran.
pub fn loaded_modules() -> Option<&'static [LoadedModule]> {
    LOADED.get().map(Vec::as_slice)
}

/// In a module build, the backend may start only after [`load_modules`]: otherwise llama.cpp
/// would call `ggml_backend_load_all` and choose by CPUID alone.
pub(crate) fn ready_to_start() -> Result<(), EngineError> {
    if DYNAMIC && LOADED.get().is_none() {
        return Err(EngineError::Backend(
            "no llama.cpp backend module is loaded; load the CPU variant chosen for this machine first".into(),
        ));
    }
    Ok(())
}
