//! Where a sweep's jobs run: in this process or several local processes (`local`), or as
//! Slurm jobs (`slurm`). Every executor runs the same per-job command (`--plan` prints
//! it), so the table does not depend on which one ran it.
pub mod local;
pub mod slurm;
