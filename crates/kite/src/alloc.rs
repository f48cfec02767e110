//! The process's allocator: mimalloc, with large blocks staggered within their page
//! ("cache colouring").
//!
//! mimalloc starts every block above 128 KiB on a page boundary (and, for instance, every
//! block of its 20 KiB size class). A copy between two buffers that start at the same
//! page offset, with a few header bytes between the source's and the destination's data (a
//! WebSocket frame's into tungstenite's write buffer, that buffer into a TLS record's), has
//! every load follow a store to the same page offset, which the CPU takes for a dependency
//! (4K aliasing): `rep movsb` ran at a fraction of its speed, and a port-forward spent a
//! third of kite's CPU in `memmove` (docs/benchmarks.md, session 31). glibc's malloc, whose
//! blocks fall at any offset, did not show it. So blocks of [`LARGE`] bytes or more start
//! at an offset into the block mimalloc gives, a multiple of 64 that changes from one block
//! to the next, kept in the word before the block; one buffer of each such copy at an
//! offset of its own is enough. Smaller blocks, and those asking for more than 64-byte
//! alignment, are mimalloc's as they are.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Blocks from this size on are staggered: mimalloc's "large" ones, above its largest
/// size class (128 KiB), each of which starts a page. A port-forward's buffers (128 KiB
/// reads with a frame header's room, tungstenite's write buffer) are such blocks; the
/// many smaller ones of a pod's start are left alone (staggering every block from 16 KiB
/// on, or 64 KiB, moved them into larger size classes, and the node bench measured a
/// slower start).
pub const LARGE: usize = 128 * 1024 + 1;
/// The offsets: 64, 128, … 4032 bytes, in turn.
const STEP: usize = 64;
const COLOURS: usize = 4096 / STEP - 1;

pub struct Coloured {
    next: AtomicUsize,
}

impl Coloured {
    pub const fn new() -> Coloured {
        Coloured {
            next: AtomicUsize::new(0),
        }
    }
}

/// Whether a block of this layout is staggered (the same answer for its alloc and dealloc).
fn staggered(l: &Layout) -> bool {
    l.size() >= LARGE && l.align() <= STEP
}

/// The layout asked of mimalloc for `l` with `off` bytes before it.
fn outer(l: &Layout, off: usize) -> Option<Layout> {
    Layout::from_size_align(l.size().checked_add(off)?, STEP).ok()
}

unsafe impl GlobalAlloc for Coloured {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY (all of this impl): mimalloc's own contract, with layouts that are valid
        // and non-zero; an offset block's word before it lies inside mimalloc's block,
        // since the offset is at least 64 bytes.
        unsafe { self.alloc_with(l, false) }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        unsafe { self.alloc_with(l, true) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe {
            if !staggered(&l) {
                return mimalloc::MiMalloc.dealloc(p, l);
            }
            let off = p.cast::<usize>().sub(1).read();
            let o = outer(&l, off).expect("the layout it was made with");
            mimalloc::MiMalloc.dealloc(p.sub(off), o)
        }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        unsafe {
            let Ok(new) = Layout::from_size_align(new_size, l.align()) else {
                return std::ptr::null_mut();
            };
            match (staggered(&l), staggered(&new)) {
                (false, false) => return mimalloc::MiMalloc.realloc(p, l, new_size),
                // mimalloc's own realloc of the whole block (in place where it can): the
                // offset, and the word that keeps it, move along.
                (true, true) => {
                    let off = p.cast::<usize>().sub(1).read();
                    let (Some(o), Some(size)) = (outer(&l, off), new_size.checked_add(off)) else {
                        return std::ptr::null_mut();
                    };
                    let r = mimalloc::MiMalloc.realloc(p.sub(off), o, size);
                    return if r.is_null() { r } else { r.add(off) };
                }
                _ => {}
            }
            let q = self.alloc(new);
            if !q.is_null() {
                std::ptr::copy_nonoverlapping(p, q, l.size().min(new_size));
                self.dealloc(p, l);
            }
            q
        }
    }
}

impl Coloured {
    unsafe fn alloc_with(&self, l: Layout, zeroed: bool) -> *mut u8 {
        unsafe {
            let get = |l: Layout| {
                if zeroed {
                    mimalloc::MiMalloc.alloc_zeroed(l)
                } else {
                    mimalloc::MiMalloc.alloc(l)
                }
            };
            if !staggered(&l) {
                return get(l);
            }
            let off = STEP * (1 + self.next.fetch_add(1, Ordering::Relaxed) % COLOURS);
            let Some(o) = outer(&l, off) else {
                return std::ptr::null_mut();
            };
            let p = get(o);
            if p.is_null() {
                return p;
            }
            let q = p.add(off);
            q.cast::<usize>().sub(1).write(off);
            q
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_their_bytes_and_alignment_through_every_path() {
        let a = Coloured::new();
        let sizes = [
            1,
            64,
            4096,
            LARGE - 1,
            LARGE,
            LARGE + 7,
            131_080,
            1 << 20,
            3 << 20,
        ];
        let mut offsets = std::collections::HashSet::new();
        for &align in &[1usize, 8, 16, 64, 4096] {
            for &size in &sizes {
                for &grow in &sizes {
                    let l = Layout::from_size_align(size, align).unwrap();
                    unsafe {
                        let p = a.alloc(l);
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "alignment {align}");
                        if staggered(&l) {
                            offsets.insert(p as usize % 4096);
                        }
                        for i in 0..size {
                            p.add(i).write(i as u8);
                        }
                        // Growing or shrinking across the threshold both ways keeps the
                        // bytes both sizes hold.
                        let q = a.realloc(p, l, grow);
                        assert!(!q.is_null());
                        assert_eq!(q as usize % align, 0);
                        for i in 0..size.min(grow) {
                            assert_eq!(q.add(i).read(), i as u8, "byte {i} of {size}->{grow}");
                        }
                        a.dealloc(q, Layout::from_size_align(grow, align).unwrap());
                        let z = a.alloc_zeroed(l);
                        assert!((0..size).all(|i| z.add(i).read() == 0));
                        a.dealloc(z, l);
                    }
                }
            }
        }
        // Large blocks fall at many offsets within a page, not one.
        assert!(offsets.len() > 16, "offsets seen: {}", offsets.len());
    }
}
