//! `lbwnet eval-dets` (scaffold: filled in by its issue).
use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct EvalDetsArgs {}

pub fn run(_args: EvalDetsArgs) -> Result<()> {
    anyhow::bail!("not implemented yet")
}
