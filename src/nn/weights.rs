//! Loading pretrained weights by name from a safetensors file (e.g. torchvision's
//! state_dict exported by `scripts/export_torchvision_weights.py`) into a VarStore.
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::path::Path;
use tch::{nn::VarStore, Tensor};

/// What a load matched, by file tensor name (without the prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    /// Model variables under the prefix that the file does not hold.
    pub missing: Vec<String>,
    /// File tensors with no variable (e.g. the ImageNet classifier `fc.*`).
    pub unused: Vec<String>,
}

/// Copies every tensor `name` of the safetensors `file` into the variable `prefix + name`
/// (e.g. prefix `backbone.`). All shapes are checked before anything is copied, so a
/// failed load leaves the model untouched; values are converted to the variable's dtype
/// and device.
pub fn load_by_name(vs: &VarStore, file: &Path, prefix: &str) -> Result<LoadReport> {
    let tensors = Tensor::read_safetensors(file)
        .with_context(|| format!("reading weights file {}", file.display()))?;
    let variables = vs.variables();
    let mut report = LoadReport::default();
    let mut copies: Vec<(&Tensor, Tensor)> = Vec::new();
    for (name, tensor) in tensors {
        let Some(variable) = variables.get(&format!("{prefix}{name}")) else {
            report.unused.push(name);
            continue;
        };
        if variable.size() != tensor.size() {
            bail!(
                "weights file {}: tensor `{name}` has shape {:?} but the model's `{prefix}{name}` has shape {:?}",
                file.display(),
                tensor.size(),
                variable.size()
            );
        }
        copies.push((variable, tensor));
        report.loaded.push(name);
    }
    for (variable, tensor) in copies {
        tch::no_grad(|| variable.shallow_clone().f_copy_(&tensor))
            .with_context(|| format!("copying weights from {}", file.display()))?;
    }
    let loaded: HashSet<&str> = report.loaded.iter().map(String::as_str).collect();
    report.missing = variables
        .keys()
        .filter_map(|key| key.strip_prefix(prefix))
        .filter(|name| !loaded.contains(name))
        .map(str::to_owned)
        .collect();
    report.loaded.sort();
    report.missing.sort();
    report.unused.sort();
    tracing::info!(
        "weights {}: loaded {} tensors into `{prefix}*`, {} model variables missing from the file{}, {} file tensors unused{}",
        file.display(),
        report.loaded.len(),
        report.missing.len(),
        preview(&report.missing),
        report.unused.len(),
        preview(&report.unused),
    );
    Ok(report)
}

/// A few names for the log line.
fn preview(names: &[String]) -> String {
    const SHOWN: usize = 4;
    match names.len() {
        0 => String::new(),
        n if n <= SHOWN => format!(" ({})", names.join(", ")),
        n => format!(" ({}, ... {} more)", names[..SHOWN].join(", "), n - SHOWN),
    }
}

/// Stops training the variables whose full names start with one of `prefixes` (a
/// backbone's `frozen_prefixes`): they no longer get gradients, so SGD (weight decay
/// included) leaves them unchanged. Returns their names, sorted.
pub fn freeze_by_prefix(vs: &VarStore, prefixes: &[String]) -> Vec<String> {
    let mut frozen: Vec<String> = vs
        .variables()
        .into_iter()
        .filter(|(name, _)| prefixes.iter().any(|p| name.starts_with(p.as_str())))
        .map(|(name, variable)| {
            let _ = variable.set_requires_grad(false);
            name
        })
        .collect();
    frozen.sort();
    frozen
}
