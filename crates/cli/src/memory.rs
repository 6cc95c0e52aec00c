//! How `runnel` asks glibc's allocator to treat freed memory.
//!
//! A consumer's records are slices of the buffer a whole response was received into, so
//! reading a topic allocates and frees one buffer of up to a few MiB per response. glibc
//! serves such sizes from fresh `mmap`s and hands them back with `munmap` (or trims them off
//! its heaps with `MADV_DONTNEED`) when they are freed, so every response's pages are faulted
//! in and zeroed again by the kernel. On a VM that reports free memory to its host, each of
//! those faults is a trip to the host. Measured with `runnel-bench consume --records 2000000`,
//! six alternating pairs against one broker: 0.34-0.38 s of system time instead of
//! 0.45-1.21 s, and 1,260-1,466 instead of 911-1,372 MB/s (docs/benchmarks.md, "Malloc
//! tunables").

/// Keeps freed memory in the process for reuse: allocations below 32 MiB come from malloc's
/// heaps, which give memory back to the kernel only once 64 MiB at their top are free. A
/// no-op where the allocator is not glibc's.
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
