//! `lbwnet inspect`: per-layer bits, alpha, sparsity, level histogram and bytes of a
//! model file, and its total size against float32.
use crate::deploy::inspect::inspect;
use crate::deploy::ModelFile;
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The model file (`lbwnet export`).
    #[arg(value_name = "MODEL.lbw")]
    pub model: PathBuf,
    /// Print the report as one JSON line instead of Markdown.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let file = ModelFile::read(&args.model)?;
    let report = inspect(&file).with_context(|| format!("model file {}", args.model.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_markdown());
    }
    Ok(())
}
