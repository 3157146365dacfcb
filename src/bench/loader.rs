//! Loader throughput (`lbwnet bench loader`): images/s of the training loader (decode,
//! resize, normalize on its background threads) over a config's training split.
use crate::config::{ExperimentConfig, SplitRole};
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::Dataset;
use anyhow::Result;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// What `bench_loader` measured and with which settings.
#[derive(Debug, Clone)]
pub struct LoaderTiming {
    pub images_per_s: f64,
    pub images: usize,
    pub root: PathBuf,
    pub threads: usize,
    pub min_size: u32,
    pub max_size: u32,
}

/// Loads `images` training images of `cfg`'s data set (generating the synthetic set if the
/// config asks for it) and reports images per second, start-up included.
pub fn bench_loader(cfg: &ExperimentConfig, images: usize) -> Result<LoaderTiming> {
    cfg.check_data_path()?;
    crate::data::synthetic::ensure_synthetic(&cfg.data.root, cfg.data.synthetic.as_ref())?;
    let dataset = Arc::new(Dataset::from_config(
        &cfg.data,
        SplitRole::Train,
        cfg.data.classes.as_deref(),
    )?);
    let loader_cfg = LoaderConfig::from_data_config(&cfg.data, true, 0);
    let threads = loader_cfg.threads;
    let started = Instant::now();
    let mut loaded = 0usize;
    for sample in Loader::new(dataset, loader_cfg, 0, Some(images))? {
        sample?;
        loaded += 1;
    }
    Ok(LoaderTiming {
        images_per_s: loaded as f64 / started.elapsed().as_secs_f64(),
        images,
        root: cfg.data.root.clone(),
        threads,
        min_size: cfg.data.min_size,
        max_size: cfg.data.max_size,
    })
}

impl LoaderTiming {
    pub fn summary(&self) -> String {
        format!(
            "loader: {:.1} images/s ({} images of {}, {} decoding thread(s), min_size {}, max_size {})",
            self.images_per_s,
            self.images,
            self.root.display(),
            self.threads,
            self.min_size,
            self.max_size
        )
    }
}
