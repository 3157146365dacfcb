//! The shipped sweep config under `--quick` with two seeds, redirected into a temporary
//! directory: every cell trains under each seed, the tables carry the spread over seeds
//! and paired differences, the plots are written, and a second run reuses finished cells.
use lbwnet::experiments::executor::local::run_sweep;
use lbwnet::experiments::sweep::SweepConfig;
use lbwnet::train::checkpoint;
use std::path::Path;

fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn quick_sweep_over_two_seeds_writes_spread_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sweep = SweepConfig::load(&repo.join("configs/sweeps/default.yaml"), &[]).unwrap();
    sweep.output_dir = dir.path().join("results");
    sweep
        .quick
        .set
        .push(format!("data.root={}", dir.path().join("data").display()));
    sweep.set_seed_count(2).unwrap();

    let table = run_sweep(&sweep, true).unwrap();
    assert_eq!(table.seeds, vec![0, 1]);
    // Float, one c for each of 6, 5, 4, 3 bits, and ternary.
    let bits: Vec<u32> = table.rows.iter().map(|r| r.bits).collect();
    assert_eq!(bits, vec![32, 6, 5, 4, 3, 2]);
    let float = &table.rows[0];
    assert_eq!(table.initial_float_maps.len(), 2);
    for row in &table.rows {
        assert_eq!(row.seeds, vec![0, 1]);
        assert_eq!(row.maps.len(), 2);
        assert!((row.map - (row.maps[0] + row.maps[1]) / 2.0).abs() < 1e-12);
        let std = (row.maps[0] - row.maps[1]).abs() / 2f64.sqrt();
        assert!((row.map_std.unwrap() - std).abs() < 1e-12, "{row:?}");
        // Two seeds: t(0.975, 1) = 12.706.
        let [lo, hi] = row.map_ci95.unwrap();
        let half = 12.706204736 * std / 2f64.sqrt();
        assert!((lo - (row.map - half)).abs() < 1e-6 && (hi - (row.map + half)).abs() < 1e-6);
        for k in 0..2 {
            assert!((row.delta_maps[k] - (row.maps[k] - float.maps[k])).abs() < 1e-12);
        }
        assert!((row.delta_map - (row.delta_maps[0] + row.delta_maps[1]) / 2.0).abs() < 1e-12);
        assert!(row.delta_ci95.is_some());
        assert_eq!(row.coco_aps.len(), 2);
        assert!(row.run_dirs[0].to_string_lossy().contains("seed-0"));
        assert!(row.run_dirs[1].to_string_lossy().contains("seed-1"));
    }
    assert_eq!(float.delta_maps, vec![0.0, 0.0]);
    assert!(!float.delta_significant);
    for row in &table.rows[1..] {
        assert!(row.compression > 4.0, "{row:?}");
        let ratio = row.error_vs_exact.unwrap();
        assert!(
            ratio >= 1.0 - 1e-6,
            "a quantizer beat the exact optimum: {row:?}"
        );
    }
    assert_eq!(float.compression, 1.0);

    // Each seed trained its own float model from its own initialization.
    let initial = |seed: u64| {
        let run = sweep
            .results_dir(true)
            .join(format!("seed-{seed}/initial/fp32"));
        let state = checkpoint::latest(&run).unwrap().unwrap();
        let weights =
            checkpoint::checkpoint_dir(&run).join(checkpoint::read_state(&state).unwrap().weights);
        let mut tensors = tch::Tensor::read_safetensors(weights).unwrap();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        tensors
    };
    let (w0, w1) = (initial(0), initial(1));
    assert!(
        w0.iter().zip(&w1).any(|(a, b)| !a.1.equal(&b.1)),
        "both seeds trained the same float model"
    );

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
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("table.json")).unwrap()).unwrap();
    for row in json["rows"].as_array().unwrap() {
        for key in [
            "maps",
            "map",
            "map_std",
            "map_ci95",
            "delta_map",
            "delta_ci95",
            "seeds",
            "coco_ap",
        ] {
            assert!(
                row.get(key).is_some_and(|v| !v.is_null()),
                "table.json row lacks {key}: {row}"
            );
        }
        assert_eq!(row["map_ci95"].as_array().unwrap().len(), 2);
    }
    let markdown = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(
        markdown.contains("±") && markdown.contains("95%") && markdown.contains("AP@[.5:.95]"),
        "{markdown}"
    );
    // Each cell links its runs' training curves, relative to the results directory.
    let links: Vec<&str> = markdown
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .filter(|target| target.ends_with("curves.png"))
        .collect();
    assert_eq!(links.len(), 2 * table.rows.len(), "{markdown}");
    for target in links {
        assert!(
            out.join(target).is_file(),
            "{target} in table.md is not a file"
        );
    }

    // Finished cells are reused: the second run trains nothing and reports the same mAPs.
    let again = run_sweep(&sweep, true).unwrap();
    let maps = |t: &lbwnet::experiments::table::SweepTable| {
        t.rows.iter().map(|r| r.maps.clone()).collect::<Vec<_>>()
    };
    assert_eq!(maps(&table), maps(&again));
    assert!(again.seconds < table.seconds);

    // A cell whose saved config is not the planned one is retrained; one that was
    // interrupted (no metrics yet) is finished from its checkpoint; the others are reused.
    let edited = table.rows[1].run_dirs[0].clone();
    let interrupted = table.rows[2].run_dirs[1].clone();
    let untouched = table.rows[3].run_dirs[1].join("metrics.json");
    let config = edited.join("config.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("lr: ", "lr: 0.0")).unwrap();
    std::fs::remove_file(interrupted.join("metrics.json")).unwrap();
    let before = (modified(&edited.join("metrics.json")), modified(&untouched));
    let third = run_sweep(&sweep, true).unwrap();
    assert!(
        modified(&edited.join("metrics.json")) > before.0,
        "the edited cell was reused"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text);
    assert!(interrupted.join("metrics.json").is_file());
    assert_eq!(
        modified(&untouched),
        before.1,
        "an up-to-date cell was retrained"
    );
    assert_eq!(maps(&table), maps(&third));
}

#[test]
fn zero_seeds_are_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lbwnet"))
        .args([
            "sweep",
            "--config",
            "configs/sweeps/default.yaml",
            "--quick",
            "--seeds",
            "0",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seeds"));
}

#[test]
fn shipped_sweep_configs_load_and_plan() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/sweeps");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let sweep = SweepConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{e:#}"));
        let plans = sweep
            .plan(false)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert_eq!(plans.len(), sweep.seeds.len());
        for plan in &plans {
            assert!(plan.float.quant.is_float());
            assert_eq!(plan.float.train.seed, plan.seed);
            assert!(!plan.cells.is_empty());
            for cell in &plan.cells {
                assert_eq!(cell.train.seed, plan.seed);
                assert_eq!(
                    cell.train.init_from.as_deref(),
                    Some(plan.float.run_dir().as_path())
                );
            }
        }
    }
}
