//! `lbwnet quantize` (scaffold: filled in by its issue).
use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct QuantizeArgs {}

pub fn run(_args: QuantizeArgs) -> Result<()> {
    anyhow::bail!("not implemented yet")
}
