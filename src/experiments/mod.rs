//! Experiments: bit-width / threshold sweeps, their tables (mAP, storage, quantizer error
//! against the exact optimum) and plots.
pub mod plots;
pub mod sweep;
pub mod table;
