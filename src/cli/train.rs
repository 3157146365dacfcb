//! `lbwnet train` (scaffold: filled in by its issue).
use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct TrainArgs {}

pub fn run(_args: TrainArgs) -> Result<()> {
    anyhow::bail!("not implemented yet")
}
