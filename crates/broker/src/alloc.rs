//! `runneld`'s allocator: the system allocator, except that an allocation of at least
//! [`HUGE`] bytes is an anonymous mapping the kernel commits only as its pages are touched
//! (`mmap` with `MAP_NORESERVE`).
//!
//! Why: a decoder that sizes a vector from a count read off the wire (as `kafka-protocol`
//! does for arrays, before it has decoded one element) asks for `count` times the element's
//! size at once. A hostile Kafka request of a few bytes can claim two billion elements: from
//! the system allocator, an allocation of hundreds of gigabytes fails, and a failed allocation
//! aborts the process. As a lazily committed mapping it succeeds, the decoder fails at the
//! first element the request does not hold, and only the pages it touched (bounded by the
//! request's size) were ever used. The broker's own allocations never come near [`HUGE`]
//! (requests are at most `limits.max_request_bytes`, reads a few MiB).
//!
//! With `vm.overcommit_memory = 2` (strict accounting) the kernel ignores `MAP_NORESERVE` and
//! such a request fails the allocation as before.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;

use rustix::mm::{MapFlags, ProtFlags, mmap_anonymous, munmap};

/// Allocations of at least this many bytes are lazily committed mappings.
pub const HUGE: usize = 1 << 30;

/// The alignment a mapping is guaranteed: the page size.
const PAGE: usize = 4096;

/// The allocator (`#[global_allocator]` in `runneld` and in the broker's tests).
#[derive(Debug)]
pub struct Allocator;

fn mapped(layout: Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= PAGE
}

fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address the kernel picks aliases nothing.
    let mapped = unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            size,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    };
    mapped.map_or(std::ptr::null_mut(), |p| p.cast())
}

// SAFETY: every pointer handed out is either the system allocator's (for layouts it serves)
// or a fresh mapping of at least the layout's size, page-aligned (at least the layout's
// alignment), released with the same size it was made with; mappings are zero-filled.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mapped(layout) {
            return map(layout.size());
        }
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(layout) {
            return map(layout.size());
        }
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if mapped(layout) {
            // SAFETY: `ptr` came from `map` with this same size (the layout decides the
            // kind), and nothing uses it after its deallocation.
            let _ = unsafe { munmap(ptr.cast::<c_void>(), layout.size()) };
            return;
        }
        // SAFETY: `ptr` came from the system allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` makes a valid layout with this alignment.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !mapped(layout) && !mapped(new) {
            // SAFETY: the caller's contract for `realloc` is the system allocator's.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `new` has a nonzero size (it or `layout` is at least HUGE, and a realloc
        // to zero is not allowed).
        let moved = unsafe { self.alloc(new) };
        if !moved.is_null() {
            // SAFETY: both blocks are live, distinct, and hold at least the smaller size.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_of_billions_of_elements_costs_only_what_is_touched() {
        // 100 GB asked for, as a hostile count would make a decoder ask; a few pages used.
        let layout = Layout::from_size_align(100 << 30, 8).unwrap();
        // SAFETY: a valid nonzero layout; the block is written within bounds and freed once.
        unsafe {
            let p = Allocator.alloc(layout);
            assert!(!p.is_null());
            *p = 7;
            *p.add((100 << 30) - 1) = 9;
            assert_eq!(*p, 7);
            let q = Allocator.realloc(p, layout, 16);
            assert_eq!(*q, 7);
            Allocator.dealloc(q, Layout::from_size_align(16, 8).unwrap());
        }
        let mut v: Vec<u64> = Vec::with_capacity(10_000_000_000);
        v.extend([1, 2, 3]);
        assert_eq!(v.iter().sum::<u64>(), 6);
    }
}
