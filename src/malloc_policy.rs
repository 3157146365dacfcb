//! How the process's C allocator (which libtorch's CPU tensors come from) treats large
//! blocks. By default glibc serves every block above 32 MiB with its own `mmap` and unmaps
//! it on free, so each training step of a 600x1000 detector maps, page-faults (the kernel
//! zeroes every page) and unmaps its activations and gradients afresh: measured here on
//! ResNet-50 C4, a third of the step went to the kernel. Keeping freed memory in the heap
//! for the next step removes that; the cost is that the process keeps its high-water mark.
//! `LBWNET_RETURN_MEMORY=1` restores glibc's default.

/// The variable that opts out of [`keep_freed_memory`].
pub const OPT_OUT_VAR: &str = "LBWNET_RETURN_MEMORY";

/// Serves large blocks from the heap and never trims it (glibc); call before any large
/// allocation. Returns whether the policy was applied.
pub fn keep_freed_memory() -> bool {
    if std::env::var_os(OPT_OUT_VAR).is_some_and(|v| v != "0") {
        return false;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt only changes allocator parameters; it is called before threads that
    // allocate are started.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}
