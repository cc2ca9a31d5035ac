//! The allocator of a Rust transform: an arena made for one message.
//!
//! The host runs every message in a fresh instance and throws it away
//! afterwards, so a transform never needs memory back for a later message.
//! A general allocator (dlmalloc, wasi-libc's or std's) pays for reuse that never
//! comes: it sets itself up in every instance, grows the memory, and keeps
//! free lists. In the shipped crm-to-shop mapping that was about a third
//! of the guest's own instructions (docs/benchmarks.md). Here an
//! allocation is a pointer bump in a static arena, and freeing the newest
//! block gives it back (so a growing `String` or `Vec` grows in place);
//! other frees do nothing until the instance is dropped. Past the arena's
//! end, allocations go to the system allocator, so a transform that
//! allocates a lot still runs up to its route's memory limit.
//!
//! Installed by default on WebAssembly targets (the `arena` feature); a
//! transform that brings its own `#[global_allocator]` turns it off with
//! `default-features = false`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, UnsafeCell};

/// Bytes of the arena: room for a message of a few kilobytes and what a
/// mapping makes of it. Only the pages a message touches cost anything
/// (the host resets dirty pages), so the arena stays small: a transform
/// that allocates more than this goes on with the system allocator,
/// which reuses what it frees.
pub const ARENA_BYTES: usize = 64 << 10;

/// A bump allocator over `N` bytes, falling back to the system allocator.
/// Aligned so that offsets into it are as aligned as addresses, for the
/// alignments Rust's types use.
#[repr(C, align(16))]
pub struct Arena<const N: usize> {
    bytes: UnsafeCell<[u8; N]>,
    /// Offset of the first free byte.
    top: Cell<usize>,
    /// One past the offset of the newest block, the one a free or a
    /// realloc can resize in place; 0 once it was freed. (All fields start
    /// at zero, so the arena lands in the zeroed `.bss`, not in the
    /// component's data.)
    newest_plus_one: Cell<usize>,
}

/// The arena's own alignment (`repr(align)` above).
const ARENA_ALIGN: usize = 16;

// SAFETY: a component instance runs on one thread (wasm32-unknown-unknown
// and wasm32-wasip2 have no threads), and the arena is installed only on WebAssembly without atomics
// (lib.rs); tests use their own.
unsafe impl<const N: usize> Sync for Arena<N> {}

impl<const N: usize> Arena<N> {
    pub const fn new() -> Self {
        Self {
            bytes: UnsafeCell::new([0; N]),
            top: Cell::new(0),
            newest_plus_one: Cell::new(0),
        }
    }

    fn base(&self) -> *mut u8 {
        self.bytes.get().cast()
    }

    /// Whether `ptr` was handed out by the arena (else by the system).
    fn owns(&self, ptr: *mut u8) -> bool {
        let (base, ptr) = (self.base() as usize, ptr as usize);
        ptr >= base && ptr < base + N
    }

    /// A block of `layout` from the arena, if it still fits.
    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        let align = layout.align();
        let start = if align <= ARENA_ALIGN {
            (self.top.get() + align - 1) & !(align - 1)
        } else {
            let base = self.base() as usize;
            (base + self.top.get()).checked_next_multiple_of(align)? - base
        };
        let end = start.checked_add(layout.size())?;
        if end > N {
            return None;
        }
        self.top.set(end);
        self.newest_plus_one.set(start + 1);
        // SAFETY: start + size <= N, inside the arena.
        Some(unsafe { self.base().add(start) })
    }

    fn is_newest(&self, ptr: *mut u8) -> bool {
        ptr as usize - self.base() as usize + 1 == self.newest_plus_one.get()
    }
}

impl<const N: usize> Default for Arena<N> {
    fn default() -> Self {
        Self::new()
    }
}

unsafe impl<const N: usize> GlobalAlloc for Arena<N> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(ptr) => ptr,
            // SAFETY: the caller's contract for `layout` is passed on.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !self.owns(ptr) {
            // SAFETY: not ours, so the system's, with this layout.
            return unsafe { System.dealloc(ptr, layout) };
        }
        if self.is_newest(ptr) {
            self.top.set(self.newest_plus_one.get() - 1);
            self.newest_plus_one.set(0);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !self.owns(ptr) {
            // SAFETY: not ours, so the system's, with this layout.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let start = ptr as usize - self.base() as usize;
        if self.is_newest(ptr) && start + new_size <= N {
            self.top.set(start + new_size);
            return ptr;
        }
        if new_size <= layout.size() {
            return ptr;
        }
        // SAFETY: `realloc`'s contract: the new size with the old alignment is a valid layout.
        let grown = unsafe { self.alloc(Layout::from_size_align_unchecked(new_size, layout.align())) };
        if !grown.is_null() {
            // SAFETY: both blocks are at least `layout.size()` long and distinct.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, grown, layout.size());
                self.dealloc(ptr, layout);
            }
        }
        grown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn blocks_are_aligned_distinct_and_inside_the_arena() {
        let arena = Arena::<1024>::new();
        unsafe {
            let a = arena.alloc(layout(3, 1));
            let b = arena.alloc(layout(8, 8));
            let c = arena.alloc(layout(1, 16));
            let d = arena.alloc(layout(1, 64));
            assert!(arena.owns(a) && arena.owns(b) && arena.owns(c) && arena.owns(d));
            assert_eq!(b as usize % 8, 0);
            assert_eq!(c as usize % 16, 0);
            assert_eq!(d as usize % 64, 0);
            assert!(b as usize >= a as usize + 3 && c as usize >= b as usize + 8);
        }
    }

    #[test]
    fn the_newest_block_grows_in_place_and_frees_its_room() {
        let arena = Arena::<1024>::new();
        unsafe {
            let a = arena.alloc(layout(16, 1));
            a.write_bytes(7, 16);
            let grown = arena.realloc(a, layout(16, 1), 100);
            assert_eq!(grown, a);
            assert_eq!(arena.top.get(), 100);
            arena.dealloc(grown, layout(100, 1));
            assert_eq!(arena.top.get(), 0);
        }
    }

    #[test]
    fn an_older_block_moves_when_it_grows_and_keeps_its_bytes() {
        let arena = Arena::<1024>::new();
        unsafe {
            let a = arena.alloc(layout(4, 1));
            a.copy_from_nonoverlapping(b"abcd".as_ptr(), 4);
            let _b = arena.alloc(layout(4, 1));
            let moved = arena.realloc(a, layout(4, 1), 8);
            assert_ne!(moved, a);
            assert_eq!(std::slice::from_raw_parts(moved, 4), b"abcd");
        }
    }

    #[test]
    fn past_its_end_the_system_allocator_takes_over() {
        let arena = Arena::<64>::new();
        unsafe {
            let small = arena.alloc(layout(60, 1));
            let large = arena.alloc(layout(4096, 8));
            assert!(arena.owns(small) && !large.is_null() && !arena.owns(large));
            large.write_bytes(1, 4096);
            // The newest arena block grows out of the arena: moved to the system.
            let moved = arena.realloc(small, layout(60, 1), 200);
            assert!(!arena.owns(moved));
            let grown = arena.realloc(large, layout(4096, 8), 8192);
            assert_eq!(*grown.add(4095), 1);
            arena.dealloc(grown, layout(8192, 8));
            arena.dealloc(moved, layout(200, 1));
        }
    }
}
