//! The shipped sweep config under `--quick`, redirected into a temporary directory: every
//! cell trains, the tables and plots are written, and a second run skips finished cells.
use lbwnet::experiments::sweep::{run_sweep, SweepConfig};
use std::path::Path;

#[test]
fn quick_sweep_writes_tables_and_plots_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sweep = SweepConfig::load(&repo.join("configs/sweeps/default.yaml")).unwrap();
    sweep.output_dir = dir.path().join("results");
    sweep
        .quick
        .set
        .push(format!("data.root={}", dir.path().join("data").display()));

    let table = run_sweep(&sweep, true).unwrap();
    // Float, one c for each of 6, 5, 4, 3 bits, and ternary.
    let bits: Vec<u32> = table.rows.iter().map(|r| r.bits).collect();
    assert_eq!(bits, vec![32, 6, 5, 4, 3, 2]);
    for row in &table.rows[1..] {
        assert!(row.compression > 4.0, "{row:?}");
        let ratio = row.error_vs_exact.unwrap();
        assert!(
            ratio >= 1.0 - 1e-6,
            "a quantizer beat the exact optimum: {row:?}"
        );
    }
    assert_eq!(table.rows[0].compression, 1.0);
    let out = sweep.results_dir(true);
    for file in [
        "table.md",
        "table.json",
        "paper_table.md",
        "map_vs_c.png",
        "map_vs_bits.png",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let png = std::fs::read(out.join("map_vs_bits.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    // Finished cells are skipped: the second run trains nothing and reports the same mAPs.
    let again = run_sweep(&sweep, true).unwrap();
    let maps = |t: &lbwnet::experiments::table::SweepTable| {
        t.rows.iter().map(|r| r.map).collect::<Vec<_>>()
    };
    assert_eq!(maps(&table), maps(&again));
    assert!(again.seconds < table.seconds);
}

#[test]
fn shipped_sweep_configs_load_and_plan() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/sweeps");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let sweep = SweepConfig::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
        let (float, cells) = sweep
            .plan(false)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert!(float.quant.is_float());
        assert!(!cells.is_empty());
        for cell in &cells {
            assert_eq!(
                cell.train.init_from.as_deref(),
                Some(float.run_dir().as_path())
            );
        }
    }
}
