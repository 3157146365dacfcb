//! `lbwnet gen-data` (scaffold: filled in by its issue).
use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct GenDataArgs {}

pub fn run(_args: GenDataArgs) -> Result<()> {
    anyhow::bail!("not implemented yet")
}
