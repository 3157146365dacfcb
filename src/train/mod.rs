//! Training: the SGD optimizer with momentum buffers we can checkpoint, the learning-rate
//! schedule, checkpoints, the training loop, its log and curves, and evaluation of a model
//! on a split.
pub mod checkpoint;
pub mod curves;
pub mod determinism;
pub mod evaluate;
pub mod schedule;
pub mod setup;
pub mod sgd;
pub mod trainer;
