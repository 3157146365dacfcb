//! Helpers the integration tests share: running the built binary, reading the committed
//! fixtures, reading checkpoint weights. Each test crate uses a subset.
#![allow(dead_code)]
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use tch::Tensor;

/// The built `lbwnet` binary, ready for arguments.
pub fn lbwnet_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lbwnet"))
}

/// Runs `lbwnet args` and returns its output, whatever the exit.
pub fn lbwnet(args: &[&str]) -> Output {
    lbwnet_command()
        .args(args)
        .output()
        .expect("running lbwnet")
}

/// Fails the test, with the command's stderr, unless `out` is a successful exit.
pub fn assert_success(out: Output) -> Output {
    assert!(
        out.status.success(),
        "lbwnet failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `lbwnet args`, which must succeed.
pub fn lbwnet_ok(args: &[&str]) -> Output {
    assert_success(lbwnet(args))
}

/// A JSON fixture from `tests/fixtures/`.
pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("number array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

pub fn i64s(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("integer array")
        .iter()
        .map(|x| x.as_i64().expect("integer"))
        .collect()
}

/// The tensors of a safetensors file, sorted by name.
pub fn read_weights(path: &Path) -> Vec<(String, Tensor)> {
    let mut tensors = Tensor::read_safetensors(path).unwrap();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}
