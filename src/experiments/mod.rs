//! Experiments: bit-width / threshold sweeps over several seeds, their tables (mAP with
//! spread and confidence intervals, storage, quantizer error against the exact optimum)
//! and plots.
pub mod plots;
pub mod stats;
pub mod sweep;
pub mod table;
