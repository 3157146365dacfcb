//! `lbwnet quantize` end to end: JSON summary, output file, and the error cases, which
//! must exit non-zero, say why, and leave no output file behind.
mod common;

use common::lbwnet;
use std::path::{Path, PathBuf};
use std::process::Output;
use tch::{Device, Kind, Tensor};

fn run_quantize(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "-q",
        "quantize",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    lbwnet(&args)
}

fn weights_file(dir: &Path) -> (PathBuf, Tensor) {
    tch::manual_seed(3);
    let w = Tensor::randn([16, 8, 3, 3], (Kind::Float, Device::Cpu)) * 0.1;
    let path = dir.join("w.npy");
    w.write_npy(&path).unwrap();
    (path, w)
}

/// Only the files the test wrote itself: no output, no leftover temporary.
fn assert_no_output(dir: &Path, inputs: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut expected: Vec<String> = inputs.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn json_summary_matches_the_written_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (input, w) = weights_file(dir.path());
    let output = dir.path().join("q.npy");
    let out = run_quantize(
        &input,
        &output,
        &["--method", "lbw", "--bits", "4", "--c", "3.0", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["method"], "lbw");
    assert_eq!(json["bits"], 4);
    assert_eq!(json["c"], 3.0);

    let q = Tensor::read_npy(&output).unwrap();
    assert_eq!((q.size(), q.kind()), (w.size(), Kind::Float));
    let mse = (&w - &q).square().mean(Kind::Double).double_value(&[]);
    assert!(
        (json["mse"].as_f64().unwrap() / mse - 1.0).abs() < 1e-6,
        "{json} vs mse {mse}"
    );
    let mean_abs = w.abs().mean(Kind::Double).double_value(&[]);
    let alpha = json["alpha"].as_f64().unwrap();
    assert!((alpha / (3.0 * mean_abs) - 1.0).abs() < 1e-6);
    let counts: Vec<u64> = json["level_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect();
    assert_eq!(counts.len(), 5);
    assert_eq!(counts.iter().sum::<u64>(), 1152);
    let nonzero = q.ne(0).sum(Kind::Int64).int64_value(&[]) as f64 / 1152.0;
    assert!((json["nonzero_fraction"].as_f64().unwrap() - nonzero).abs() < 1e-12);
    // Every output value is alpha times a level.
    let levels = (q.abs() / alpha).log2();
    let on_levels = levels
        .isinf()
        .logical_or(&(&levels - levels.round()).abs().lt(1e-5));
    assert!(bool::try_from(on_levels.all()).unwrap());
}

#[test]
fn every_method_runs_and_the_summary_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = weights_file(dir.path());
    let output = dir.path().join("q.npy");
    for (method, bits) in [
        ("exact", "6"),
        ("ternary", "2"),
        ("twn", "2"),
        ("pow2", "5"),
        ("uniform", "8"),
        ("lbw", "2"),
    ] {
        let out = run_quantize(
            &input,
            &output,
            &["--method", method, "--bits", bits, "--json"],
        );
        assert!(
            out.status.success(),
            "{method}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["method"], method);
        assert_eq!(json["c"].is_null(), method != "lbw", "{method}: {json}");
    }
    let out = run_quantize(&input, &output, &["--bits", "6"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("lbw at 6 bits, c 7.2: alpha") && stdout.contains("mse"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 3 + 17, "{stdout}");
}

#[test]
fn bad_input_and_arguments_fail_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = weights_file(dir.path());
    let doubles = dir.path().join("f64.npy");
    Tensor::randn([4, 4], (Kind::Double, Device::Cpu))
        .write_npy(&doubles)
        .unwrap();
    let truncated = dir.path().join("truncated.npy");
    let bytes = std::fs::read(&input).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    let garbage = dir.path().join("garbage.npy");
    std::fs::write(&garbage, b"this is not numpy").unwrap();
    let non_finite = dir.path().join("nan.npy");
    Tensor::from_slice(&[1.0f32, f32::NAN])
        .write_npy(&non_finite)
        .unwrap();
    let missing = dir.path().join("missing.npy");
    let files = [
        "w.npy",
        "f64.npy",
        "truncated.npy",
        "garbage.npy",
        "nan.npy",
    ];
    let output = dir.path().join("q.npy");

    let cases: Vec<(&Path, Vec<&str>, &str)> = vec![
        (&missing, vec!["--bits", "4"], "missing.npy"),
        (&doubles, vec!["--bits", "4"], "'<f8'"),
        (&truncated, vec!["--bits", "4"], "truncated.npy"),
        (&garbage, vec!["--bits", "4"], "garbage.npy"),
        (&non_finite, vec!["--bits", "4"], "NaN"),
        (&input, vec!["--bits", "1"], "bits 1"),
        (&input, vec!["--bits", "9"], "bits 9"),
        (&input, vec!["--bits", "4", "--c", "0"], "c 0"),
        (&input, vec!["--bits", "4", "--c", "-2"], "c -2"),
        (
            &input,
            vec!["--bits", "4", "--method", "nearest"],
            "nearest",
        ),
        (
            &input,
            vec!["--bits", "4", "--method", "ternary"],
            "ternary",
        ),
    ];
    for (path, args, needle) in cases {
        let out = run_quantize(path, &output, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} on {} succeeded",
            path.display()
        );
        assert!(
            stderr.contains(needle),
            "{args:?} on {}: {stderr}",
            path.display()
        );
        assert_no_output(dir.path(), &files);
    }
}
