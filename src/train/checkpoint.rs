//! Checkpoints: model weights and momentum buffers in one safetensors file, plus a JSON
//! state written after it (the JSON is the commit marker: a checkpoint counts only once
//! its JSON exists). Both are written atomically and durably: the weights are flushed to
//! disk before the marker is written, and the directory after each rename, so after a
//! crash or a power loss a marker never names weights that did not reach the disk. The
//! marker records the weights' length and checksum; a resume checks them and falls back,
//! with a warning, to the newest checkpoint that is complete.
use crate::fsutil::{remove_stale_temp_files, write_atomic, write_atomic_via_path};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tch::nn::VarStore;
use tch::Tensor;

const MOMENTUM_PREFIX: &str = "optimizer.momentum.";
/// Older checkpoints beyond this many are deleted.
const KEEP_LAST: usize = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Iterations completed.
    pub iteration: usize,
    /// The weights file, relative to the checkpoint directory.
    pub weights: String,
    /// Seconds of training so far (for images/s across resumes).
    pub train_seconds: f64,
    /// The experiment config in force, as YAML.
    pub config_yaml: String,
    /// Length of the weights file in bytes (absent in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_bytes: Option<u64>,
    /// [`file_checksum`] of the weights file, 8 hex digits (absent in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_checksum: Option<String>,
}

pub fn checkpoint_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Writes the weights and optimizer state after `state.iteration` iterations: the
/// weights file (flushed), then its marker. Returns the marker's path.
pub fn save(
    run_dir: &Path,
    vs: &VarStore,
    momentum: &[(String, Tensor)],
    mut state: CheckpointState,
) -> Result<PathBuf> {
    let dir = checkpoint_dir(run_dir);
    let stem = format!("iter_{:07}", state.iteration);
    state.weights = format!("{stem}.safetensors");
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    tensors.extend(
        momentum
            .iter()
            .map(|(name, t)| (format!("{MOMENTUM_PREFIX}{name}"), t.shallow_clone())),
    );
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let weights_path = dir.join(&state.weights);
    let mut summary = None;
    write_atomic_via_path(&weights_path, |tmp| {
        Tensor::write_safetensors(&tensors, tmp)?;
        summary = Some(file_checksum(tmp)?);
        Ok(())
    })?;
    let (bytes, checksum) = summary.context("the weights were not written")?;
    state.weights_bytes = Some(bytes);
    state.weights_checksum = Some(format!("{checksum:08x}"));
    let state_path = dir.join(format!("{stem}.json"));
    write_atomic(
        &state_path,
        serde_json::to_string_pretty(&state)?.as_bytes(),
    )?;
    prune(&dir)?;
    Ok(state_path)
}

/// The committed checkpoints (markers) of a directory, oldest first: by the iteration in
/// the file name as a number (`iter_10000000` after `iter_9999999`, which sort the other
/// way as text), then by name.
fn committed(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut states: Vec<(Option<u64>, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json") && is_iter_file(p))
        .map(|p| (file_iteration(&p), p))
        .collect();
    states.sort();
    Ok(states.into_iter().map(|(_, p)| p).collect())
}

fn is_iter_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("iter_"))
}

/// The iteration a checkpoint file's name carries (`iter_<n>.json`, `iter_<n>.safetensors`).
fn file_iteration(path: &Path) -> Option<u64> {
    path.file_stem()?
        .to_str()?
        .strip_prefix("iter_")?
        .parse()
        .ok()
}

/// A marker's `weights` must be a plain file name: the weights lie beside the marker.
fn check_weights_name(state_path: &Path, weights: &str) -> Result<()> {
    if weights.is_empty() || weights == "." || weights == ".." || weights.contains(['/', '\\']) {
        bail!(
            "checkpoint state {} names weights `{weights}`, not a file beside it",
            state_path.display()
        );
    }
    Ok(())
}

/// Keeps the newest [`KEEP_LAST`] checkpoints. A marker goes before its weights, so a
/// marker never names deleted weights even if the process dies in between. Weights
/// without a marker (a process killed between the two writes) and temporary files of
/// killed writes go too: only this run's trainer writes here.
fn prune(dir: &Path) -> Result<()> {
    let states = committed(dir)?;
    for old in states.iter().take(states.len().saturating_sub(KEEP_LAST)) {
        std::fs::remove_file(old).ok();
        std::fs::remove_file(old.with_extension("safetensors")).ok();
    }
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "safetensors")
            && is_iter_file(&path)
            && !path.with_extension("json").exists()
        {
            std::fs::remove_file(&path).ok();
        }
    }
    remove_stale_temp_files(dir)?;
    Ok(())
}

/// Why the checkpoint of `state_path` cannot be resumed from, or its state.
pub fn verify(state_path: &Path) -> Result<CheckpointState> {
    let state = read_state(state_path)?;
    let dir = state_path.parent().unwrap_or(Path::new("."));
    check_weights_name(state_path, &state.weights)?;
    let weights = dir.join(&state.weights);
    let actual = std::fs::metadata(&weights)
        .with_context(|| format!("weights {} are missing", weights.display()))?
        .len();
    if let Some(expected) = state.weights_bytes {
        if actual != expected {
            bail!(
                "weights {} are {actual} bytes, the checkpoint says {expected} (truncated or overwritten)",
                weights.display()
            );
        }
    }
    check_safetensors_layout(&weights)?;
    if let Some(expected) = &state.weights_checksum {
        let (_, checksum) = file_checksum(&weights)?;
        if format!("{checksum:08x}") != *expected {
            bail!(
                "weights {} do not match the checkpoint's checksum (corrupted)",
                weights.display()
            );
        }
    }
    Ok(state)
}

/// Checks a safetensors file's framing: the header is JSON, and the tensors' data ends
/// exactly at the end of the file (a truncated file fails here).
fn check_safetensors_layout(path: &Path) -> Result<()> {
    let bad = |what: &str| {
        anyhow::anyhow!(
            "weights {} are not a complete safetensors file: {what}",
            path.display()
        )
    };
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata()?.len();
    let mut head = [0u8; 8];
    file.read_exact(&mut head)
        .map_err(|_| bad("shorter than its header length"))?;
    let header_len = u64::from_le_bytes(head);
    if header_len > 100_000_000 || 8 + header_len > len {
        return Err(bad("the header length is past the end of the file"));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|_| bad("the header is cut short"))?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| bad(&format!("the header is not JSON ({e})")))?;
    let mut data_end = 0u64;
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let end = info
            .get("data_offsets")
            .and_then(|o| o.get(1))
            .and_then(|v| v.as_u64())
            .ok_or_else(|| bad(&format!("tensor {name} has no data offsets")))?;
        data_end = data_end.max(end);
    }
    // Offsets come from the file: add them checked.
    let needed = (8 + header_len)
        .checked_add(data_end)
        .ok_or_else(|| bad("a tensor's data offset is out of range"))?;
    if needed != len {
        return Err(bad(&format!(
            "the tensors need {needed} bytes, the file has {len}"
        )));
    }
    Ok(())
}

/// Length and CRC-32 of a file's bytes (detects truncation, torn writes and flipped bits;
/// not cryptographic).
pub fn file_checksum(path: &Path) -> Result<(u64, u32)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok((total, hasher.finalize())),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

/// Checkpoints already warned about in this process (a resume looks twice: for the
/// config, then for the weights).
fn warn_once(state_path: &Path, why: &anyhow::Error) {
    static WARNED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if warned
        .get_or_insert_with(HashSet::new)
        .insert(state_path.to_path_buf())
    {
        tracing::warn!(
            "skipping checkpoint {}: {why:#}; falling back to the previous one",
            state_path.display()
        );
    }
}

/// What [`find_latest`] found in a run directory.
pub struct Latest {
    /// The newest complete checkpoint: its marker's path and state.
    pub complete: Option<(PathBuf, CheckpointState)>,
    /// Newer checkpoints that are not complete, newest first, with the reason.
    pub incomplete: Vec<(PathBuf, String)>,
}

/// The newest complete checkpoint of a run directory (marker readable, weights present
/// with the recorded length, framing and checksum), warning once about each newer one
/// that is not.
pub fn find_latest(run_dir: &Path) -> Result<Latest> {
    let mut incomplete = Vec::new();
    for state_path in committed(&checkpoint_dir(run_dir))?.into_iter().rev() {
        match verify(&state_path) {
            Ok(state) => {
                return Ok(Latest {
                    complete: Some((state_path, state)),
                    incomplete,
                })
            }
            Err(why) => {
                warn_once(&state_path, &why);
                incomplete.push((state_path, format!("{why:#}")));
            }
        }
    }
    Ok(Latest {
        complete: None,
        incomplete,
    })
}

/// The newest complete checkpoint's state path in a run directory, if any (see
/// [`find_latest`]).
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(find_latest(run_dir)?.complete.map(|(path, _)| path))
}

/// The newest complete checkpoint of `run_dir`; the error says clearly when there is none,
/// and why each one found is incomplete.
pub fn require_latest(run_dir: &Path) -> Result<(PathBuf, CheckpointState)> {
    let found = find_latest(run_dir)?;
    if let Some(complete) = found.complete {
        return Ok(complete);
    }
    let dir = checkpoint_dir(run_dir);
    if found.incomplete.is_empty() {
        bail!(
            "no complete checkpoint in {} (none was written yet)",
            dir.display()
        );
    }
    let reasons: Vec<String> = found
        .incomplete
        .iter()
        .map(|(path, why)| format!("{}: {why}", path.display()))
        .collect();
    bail!(
        "no complete checkpoint in {} ({} incomplete: {})",
        dir.display(),
        reasons.len(),
        reasons.join("; ")
    )
}

/// Removes the checkpoints newer than `iteration` that [`find_latest`] skipped as
/// incomplete (a run resumed from an older checkpoint writes those iterations again), and
/// the temporary files of killed writes.
pub fn discard_newer(run_dir: &Path, iteration: usize) -> Result<()> {
    let dir = checkpoint_dir(run_dir);
    for state_path in committed(&dir)? {
        let newer = read_state(&state_path).map_or(true, |s| s.iteration > iteration)
            && file_iteration(&state_path).is_none_or(|n| n > iteration as u64);
        if newer {
            tracing::warn!(
                "removing incomplete checkpoint {} (its iterations are trained again)",
                state_path.display()
            );
            std::fs::remove_file(&state_path)
                .with_context(|| format!("removing {}", state_path.display()))?;
            std::fs::remove_file(state_path.with_extension("safetensors")).ok();
        }
    }
    remove_stale_temp_files(&dir)?;
    Ok(())
}

/// Removes a run's checkpoints (a fresh, non-resumed training): the markers first, so a
/// process killed halfway leaves no marker naming deleted weights.
pub fn clear(run_dir: &Path) -> Result<()> {
    let dir = checkpoint_dir(run_dir);
    // A link would make the cleanup delete files wherever it points.
    if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
        bail!(
            "{} is a symbolic link; refusing to clear it (remove it, or train into another run directory)",
            dir.display()
        );
    }
    if dir.is_dir() {
        for state_path in committed(&dir)? {
            std::fs::remove_file(&state_path)
                .with_context(|| format!("removing {}", state_path.display()))?;
        }
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// Reads a checkpoint state file.
pub fn read_state(state_path: &Path) -> Result<CheckpointState> {
    let text = std::fs::read_to_string(state_path)
        .with_context(|| format!("reading checkpoint state {}", state_path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("checkpoint state {} is not valid", state_path.display()))
}

/// Loads weights from a checkpoint's safetensors (or any safetensors with the model's
/// names) into `vs`, returning the momentum buffers found. Every model variable must be
/// present with its shape.
pub fn load_weights(weights_path: &Path, vs: &VarStore) -> Result<Vec<(String, Tensor)>> {
    let tensors = Tensor::read_safetensors(weights_path)
        .with_context(|| format!("reading checkpoint weights {}", weights_path.display()))?;
    let mut variables = vs.variables();
    let mut momentum = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for (name, tensor) in tensors {
            if let Some(param) = name.strip_prefix(MOMENTUM_PREFIX) {
                momentum.push((param.to_string(), tensor));
            } else if let Some(mut var) = variables.remove(&name) {
                if var.size() != tensor.size() {
                    bail!(
                        "{}: tensor {name} has shape {:?}, the model expects {:?}",
                        weights_path.display(),
                        tensor.size(),
                        var.size()
                    );
                }
                var.copy_(&tensor);
            }
        }
        Ok(())
    })?;
    if let Some(name) = variables.keys().next() {
        bail!(
            "{}: no tensor for model variable {name} ({} missing); was it written for another model config?",
            weights_path.display(),
            variables.len()
        );
    }
    Ok(momentum)
}

/// Resolves `train.init_from` / `--checkpoint`: a run directory (its latest checkpoint),
/// a checkpoint state JSON, or a safetensors file.
pub fn resolve_weights(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        let (_, state) = require_latest(path)?;
        return Ok(checkpoint_dir(path).join(state.weights));
    }
    if path.extension().is_some_and(|e| e == "json") {
        let state = read_state(path)?;
        check_weights_name(path, &state.weights)?;
        return Ok(path.parent().unwrap_or(Path::new(".")).join(state.weights));
    }
    if !path.is_file() {
        bail!("checkpoint {} does not exist", path.display());
    }
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(iteration: usize) -> CheckpointState {
        CheckpointState {
            iteration,
            weights: String::new(),
            train_seconds: 0.0,
            config_yaml: String::new(),
            weights_bytes: None,
            weights_checksum: None,
        }
    }

    /// Past 10,000,000 iterations the file names sort the wrong way as text: the newest
    /// checkpoint is still the one resumed from, and pruning keeps the newest ones.
    #[test]
    fn checkpoints_are_ordered_by_iteration_number() {
        let run = tempfile::tempdir().unwrap();
        let vs = VarStore::new(tch::Device::Cpu);
        let _ = vs.root().zeros("w", &[2]);
        for iteration in [9_999_998, 9_999_999, 10_000_000] {
            save(run.path(), &vs, &[], state(iteration)).unwrap();
        }
        let (newest, found) = require_latest(run.path()).unwrap();
        assert_eq!(found.iteration, 10_000_000);
        assert!(newest.ends_with("iter_10000000.json"));
        let kept: Vec<u64> = committed(&checkpoint_dir(run.path()))
            .unwrap()
            .iter()
            .filter_map(|p| file_iteration(p))
            .collect();
        assert_eq!(kept, vec![9_999_999, 10_000_000]);
        // Nothing complete is taken for newer than the newest.
        discard_newer(run.path(), 10_000_000).unwrap();
        assert_eq!(committed(&checkpoint_dir(run.path())).unwrap().len(), 2);
    }

    /// A marker naming weights anywhere but beside it is refused, by `--checkpoint` too.
    #[test]
    fn a_marker_names_weights_beside_it_only() {
        let dir = tempfile::tempdir().unwrap();
        for weights in ["..", ".", "../x.safetensors", "/etc/passwd", ""] {
            let marker = dir.path().join("iter_0000001.json");
            let mut s = state(1);
            s.weights = weights.to_string();
            std::fs::write(&marker, serde_json::to_string(&s).unwrap()).unwrap();
            let err = resolve_weights(&marker).unwrap_err().to_string();
            assert!(err.contains("not a file beside it"), "{weights}: {err}");
            assert!(verify(&marker).is_err());
        }
    }

    /// A fresh training does not follow a `checkpoints` link to delete files elsewhere.
    #[cfg(unix)]
    #[test]
    fn clear_refuses_a_linked_checkpoint_directory() {
        let run = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let marker = elsewhere.path().join("iter_0000001.json");
        std::fs::write(&marker, "{}").unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), checkpoint_dir(run.path())).unwrap();
        let err = clear(run.path()).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(marker.exists());
    }
}
