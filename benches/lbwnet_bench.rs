//! `cargo bench` / `make bench`: the quantizer benchmark of `lbwnet bench quantize` with
//! its default options, printed as a table.
fn main() -> anyhow::Result<()> {
    let report = lbwnet::bench::quantizers::bench_quantizers(
        &lbwnet::bench::quantizers::BenchOptions::default(),
    )?;
    print!("{}", report.table());
    Ok(())
}
