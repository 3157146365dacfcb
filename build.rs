//! Makes the built binaries find libtorch without any environment variable: an rpath to
//! the libtorch directory, and libtorch_cuda linked explicitly when that libtorch has it
//! (the linker's --as-needed would otherwise drop it, and CUDA would never be found).
//! It also compiles `src/torch_ext.cpp`, a few libtorch calls tch does not wrap.
use std::path::PathBuf;
use std::process::Command;

/// The libtorch `lib` directory, and the Python interpreter it came from (when it came
/// from a PyTorch install).
fn libtorch_lib_dir() -> Option<(PathBuf, Option<String>)> {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    if let Ok(root) = std::env::var("LIBTORCH") {
        return Some((PathBuf::from(root).join("lib"), None));
    }
    std::env::var("LIBTORCH_USE_PYTORCH").ok()?;
    // The same interpreter torch-sys asks.
    let output = Command::new("python3")
        .args([
            "-c",
            "import torch, os, sys; print(os.path.join(os.path.dirname(torch.__file__), 'lib')); print(sys.executable)",
        ])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    let lib = PathBuf::from(lines.next()?.trim());
    Some((lib, lines.next().map(|l| l.trim().to_string())))
}

/// The version string of the libtorch in `lib`: a PyTorch install keeps it in
/// `torch/version.py`, a standalone libtorch in `build-version`.
fn libtorch_version(lib: &std::path::Path) -> String {
    let root = lib.parent().unwrap_or(lib);
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("__version__") {
                return rest
                    .trim_start_matches([' ', '='])
                    .trim_matches(['\'', '"'])
                    .to_string();
            }
        }
    }
    std::fs::read_to_string(root.join("build-version"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Compiles the C++ shim against the headers beside `lib` (`<torch>/include`).
fn compile_shim(lib: &std::path::Path) {
    const SHIM: &str = "src/torch_ext.cpp";
    println!("cargo:rerun-if-changed={SHIM}");
    let include = lib.parent().unwrap_or(lib).join("include");
    cc::Build::new()
        .cpp(true)
        .file(SHIM)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .warnings(false)
        .compile("lbwnet_torch_shim");
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let Some((lib, python)) = libtorch_lib_dir() else {
        panic!("libtorch not found: set LIBTORCH, or LIBTORCH_USE_PYTORCH=1 with torch installed (the Makefile does)");
    };
    compile_shim(&lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!(
        "cargo:rustc-env=LBWNET_LIBTORCH_VERSION={}",
        libtorch_version(&lib)
    );
    // That environment also holds onnxruntime (`make setup`): `lbwnet bench detect` runs it.
    if let Some(python) = python {
        println!("cargo:rustc-env=LBWNET_PYTHON={python}");
    }
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
