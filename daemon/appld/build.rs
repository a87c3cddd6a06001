//! Build script: a package build (`dynamic-backends`) links appld to the llama.cpp libraries it
//! ships beside itself, in `../lib/appl` relative to the binary (`/usr/lib/appl`).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_DYNAMIC_BACKENDS").is_some() {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,$ORIGIN/../lib/appl");
    }
}
