//! `lbwnet bench` (scaffold: filled in by its issue).
use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> Result<()> {
    anyhow::bail!("not implemented yet")
}
