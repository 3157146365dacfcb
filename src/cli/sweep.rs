//! `lbwnet sweep` (scaffold: filled in by its issue).
use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct SweepArgs {}

pub fn run(_args: SweepArgs) -> Result<()> {
    anyhow::bail!("not implemented yet")
}
