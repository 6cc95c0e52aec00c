//! How the bench asks glibc's allocator to treat freed memory, as `runnel` and `runneld` do.
//!
//! A consumer's records are slices of the buffer a whole response was received into, so a
//! `consume` run allocates and frees one buffer of up to a few MiB per response. glibc serves
//! such sizes from fresh `mmap`s and returns them on free, so every response's pages are
//! faulted in and zeroed again; on a VM that reports free memory to its host each fault is a
//! trip to the host, and the consume row would measure that instead of the broker.

/// Keeps freed memory in the process for reuse: allocations below 32 MiB come from malloc's
/// heaps, which give memory back only once 64 MiB at their top are free. A no-op where the
/// allocator is not glibc's.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets two of malloc's tunables; it takes malloc's own locks and
    // may be called at any time. Its result (0 for a value out of range) changes nothing we
    // rely on: at worst glibc keeps its defaults.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}
