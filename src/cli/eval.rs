//! `lbwnet eval` (scaffold: filled in by its issue).
use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct EvalArgs {}

pub fn run(_args: EvalArgs) -> Result<()> {
    anyhow::bail!("not implemented yet")
}
