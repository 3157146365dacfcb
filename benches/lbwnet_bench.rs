//! `cargo bench` / `make bench`: the quantizer benchmark of `lbwnet bench quantize` with
//! its default options, printed as a table.
fn main() -> anyhow::Result<()> {
    let report =
        lbwnet::quant::bench::bench_quantizers(&lbwnet::quant::bench::BenchOptions::default())?;
    print!("{}", report.table());
    Ok(())
}
