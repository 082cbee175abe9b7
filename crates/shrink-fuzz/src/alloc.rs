//! A counting global allocator: live and peak heap bytes, and a hard cap on the live bytes so
//! that an allocation sized by an unchecked field is caught (the input saved, the process
//! stopped) instead of exhausting the machine.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Live bytes above which an allocation is refused; `usize::MAX` outside executions.
static CAP: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Set while the over-cap report runs: its own allocations pass straight through.
static REPORTING: AtomicBool = AtomicBool::new(false);

/// Where the input of the execution in progress is saved if it breaks the cap.
pub static CURRENT: Mutex<Option<(String, std::path::PathBuf)>> = Mutex::new(None);
pub static CURRENT_INPUT: Mutex<Vec<u8>> = Mutex::new(Vec::new());

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !self.admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !self.admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !self.admit(new_size - layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            LIVE.fetch_sub(new_size.saturating_sub(layout.size()), Ordering::Relaxed);
        } else if new_size < layout.size() {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        p
    }
}

impl Counting {
    /// Counts `size` more live bytes, or reports and refuses when that passes the cap.
    fn admit(&self, size: usize) -> bool {
        if REPORTING.load(Ordering::Relaxed) {
            return true;
        }
        let live = LIVE.fetch_add(size, Ordering::Relaxed).saturating_add(size);
        PEAK.fetch_max(live, Ordering::Relaxed);
        if live <= CAP.load(Ordering::Relaxed) {
            return true;
        }
        LIVE.fetch_sub(size, Ordering::Relaxed);
        REPORTING.store(true, Ordering::Relaxed);
        report_over_cap(size, live);
        // The caller's allocation fails: the process aborts after the report.
        false
    }
}

fn report_over_cap(size: usize, live: usize) {
    let saved = CURRENT.try_lock().ok().and_then(|c| c.clone());
    let input = CURRENT_INPUT
        .try_lock()
        .map(|i| i.clone())
        .unwrap_or_default();
    match saved {
        Some((target, path)) => {
            let _ = std::fs::write(&path, &input);
            eprintln!(
                "shrink-fuzz: target {target}: an allocation of {size} bytes would make {live} \
                 live bytes, past the memory bound; input saved to {}",
                path.display()
            );
        }
        None => eprintln!("shrink-fuzz: an allocation of {size} bytes passed the memory bound"),
    }
}

/// Heap bytes live now.
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Starts measuring an execution: the peak is reset to the live bytes and the cap set.
pub fn begin(cap_above_live: usize) -> usize {
    let base = live();
    PEAK.store(base, Ordering::Relaxed);
    CAP.store(base.saturating_add(cap_above_live), Ordering::Relaxed);
    base
}

/// Ends an execution: the peak above `base`; the cap is lifted.
pub fn end(base: usize) -> usize {
    CAP.store(usize::MAX, Ordering::Relaxed);
    PEAK.load(Ordering::Relaxed).saturating_sub(base)
}
