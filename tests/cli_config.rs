//! Config errors from the command line: a message naming the key or path, a non-zero exit,
//! and never a panic.
use std::path::Path;
use std::process::Command;

fn lbwnet(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lbwnet"))
        .args(args)
        .output()
        .expect("running lbwnet");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "lbwnet panicked: {stderr}");
    (out.status.success(), stderr)
}

fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn unknown_key_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "bad.yaml", "name: x\ntrain:\n  iteratoins: 5\n");
    let (ok, stderr) = lbwnet(&["train", "--config", &cfg]);
    assert!(!ok);
    assert!(
        stderr.contains("train.iteratoins") && stderr.contains("bad.yaml"),
        "{stderr}"
    );
}

#[test]
fn bad_bit_width_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "c.yaml", "name: x\n");
    let (ok, stderr) = lbwnet(&["train", "--config", &cfg, "--set", "quant.bits=12"]);
    assert!(!ok);
    assert!(
        stderr.contains("quant.bits") && stderr.contains("2..=8"),
        "{stderr}"
    );
    let (ok, stderr) = lbwnet(&["train", "--config", &cfg, "--set", "quant.c=-2"]);
    assert!(!ok);
    assert!(stderr.contains("quant.c"), "{stderr}");
}

#[test]
fn missing_data_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-voc");
    let cfg = write_config(
        dir.path(),
        "c.yaml",
        &format!("name: x\ndata:\n  root: {}\n", missing.display()),
    );
    let (ok, stderr) = lbwnet(&["train", "--config", &cfg]);
    assert!(!ok);
    assert!(
        stderr.contains("data.root") && stderr.contains("no-such-voc"),
        "{stderr}"
    );
}

#[test]
fn missing_config_file_is_named() {
    let (ok, stderr) = lbwnet(&["train", "--config", "/no/such/config.yaml"]);
    assert!(!ok);
    assert!(stderr.contains("/no/such/config.yaml"), "{stderr}");
}

#[test]
fn info_reports_libtorch() {
    // No environment: the binary finds libtorch through its rpath. A binary carried to
    // another machine (the GPU check) finds it through LD_LIBRARY_PATH instead, so that
    // one variable is kept when set.
    let mut command = Command::new(env!("CARGO_BIN_EXE_lbwnet"));
    command.arg("info").env_clear();
    if let Some(path) = std::env::var_os("LD_LIBRARY_PATH") {
        command.env("LD_LIBRARY_PATH", path);
    }
    let out = command.output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("libtorch 2.11"), "{stdout}");
    assert!(stdout.contains("cuda available"), "{stdout}");
}

/// `info` names what decides a run's bits besides its config, and follows the caps a user
/// sets to make two machines dispatch alike.
#[test]
fn info_reports_the_machine_and_instruction_set_caps() {
    let run = |caps: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lbwnet"));
        command.arg("info").env("OMP_NUM_THREADS", "1");
        for (name, value) in caps {
            command.env(name, value);
        }
        let out = command.output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let plain = run(&[]);
    for field in [
        "cpu: ",
        "aten cpu capability: ",
        "onednn isa: ",
        "cpu threads: 1",
        "tf32: ",
        "device: ",
    ] {
        assert!(plain.contains(field), "{field} missing from {plain}");
    }
    let capped = run(&[
        ("ATEN_CPU_CAPABILITY", "default"),
        ("ONEDNN_MAX_CPU_ISA", "SSE41"),
    ]);
    assert!(capped.contains("aten cpu capability: DEFAULT"), "{capped}");
    assert!(capped.contains("onednn isa: sse41"), "{capped}");
    assert!(
        capped.contains("instruction-set cap: ONEDNN_MAX_CPU_ISA=SSE41"),
        "{capped}"
    );
}
