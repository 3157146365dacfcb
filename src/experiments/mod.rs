//! Experiments: bit-width / threshold sweeps over several seeds, their tables (mAP with
//! spread and confidence intervals, storage, quantizer error against the exact optimum)
//! and plots, and the executors that spread a sweep's jobs over processes or a Slurm
//! cluster.
pub mod executor;
pub mod jobs;
pub mod plots;
pub mod report;
pub mod stats;
pub mod sweep;
pub mod table;
