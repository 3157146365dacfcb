//! Checkpoints: model weights and momentum buffers in one safetensors file, plus a JSON
//! state written after it (the JSON is the commit marker: a checkpoint counts only once
//! its JSON exists). Both are written atomically.
use crate::fsutil::{write_atomic, write_atomic_via_path};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
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
}

pub fn checkpoint_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Writes the weights and optimizer state after `state.iteration` iterations.
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
    write_atomic_via_path(&weights_path, |tmp| {
        Tensor::write_safetensors(&tensors, tmp).map_err(Into::into)
    })?;
    let state_path = dir.join(format!("{stem}.json"));
    write_atomic(
        &state_path,
        serde_json::to_string_pretty(&state)?.as_bytes(),
    )?;
    prune(&dir)?;
    Ok(state_path)
}

/// The committed checkpoints of a directory, oldest first.
fn committed(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut states: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("iter_"))
        })
        .collect();
    states.sort();
    Ok(states)
}

fn prune(dir: &Path) -> Result<()> {
    let states = committed(dir)?;
    for old in states.iter().take(states.len().saturating_sub(KEEP_LAST)) {
        std::fs::remove_file(old.with_extension("safetensors")).ok();
        std::fs::remove_file(old).ok();
    }
    Ok(())
}

/// The newest committed checkpoint's state path in a run directory, if any.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(committed(&checkpoint_dir(run_dir))?.pop())
}

/// Removes a run's checkpoints (a fresh, non-resumed training).
pub fn clear(run_dir: &Path) -> Result<()> {
    let dir = checkpoint_dir(run_dir);
    if dir.is_dir() {
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
        let state = latest(path)?
            .with_context(|| format!("{} holds no finished checkpoint", path.display()))?;
        return Ok(checkpoint_dir(path).join(read_state(&state)?.weights));
    }
    if path.extension().is_some_and(|e| e == "json") {
        let state = read_state(path)?;
        return Ok(path.parent().unwrap_or(Path::new(".")).join(state.weights));
    }
    if !path.is_file() {
        bail!("checkpoint {} does not exist", path.display());
    }
    Ok(path.to_path_buf())
}
