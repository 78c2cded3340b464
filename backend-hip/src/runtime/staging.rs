//! Pinned staging: every host<->device copy goes through a ring of page-locked slots, so copies
//! are truly asynchronous (a copy from pageable memory first waits for the whole stream) and no
//! copy ever targets memory the caller owns: the caller's bytes are copied into a slot before
//! the device copy is queued (uploads), or out of it after the copy completed (downloads).
//!
//! A slot is reused only after the event recorded behind its last copy completed. When that is
//! unknown (recording the event failed after a copy was queued, or waiting for it failed), the
//! slot is poisoned: never written again and never freed, since a copy may still read or write
//! it. Its memory is leaked, the process stays sound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use attnforge_api::{Error, Result};

use super::Driver;

/// Bytes of one slot, and how many slots rotate.
pub(super) const STAGE_BYTES: usize = 1 << 20;
pub(super) const STAGE_SLOTS: usize = 8;

struct Slot {
    host: *mut u8,
    done: u64,
    poisoned: bool,
}

// SAFETY: the pinned pointer is only dereferenced with the slot's mutex held.
unsafe impl Send for Slot {}

pub(super) struct Staging {
    slots: Vec<Mutex<Slot>>,
    next: AtomicUsize,
}

impl Staging {
    pub fn new(drv: &dyn Driver) -> Result<Staging> {
        let mut slots = Vec::with_capacity(STAGE_SLOTS);
        for _ in 0..STAGE_SLOTS {
            let host = drv.pinned_alloc(STAGE_BYTES)?;
            let done = match drv.event_create(false) {
                Ok(e) => e,
                Err(e) => {
                    // SAFETY: just allocated, never used by a copy.
                    unsafe { drv.pinned_free(host) };
                    Staging { slots, next: AtomicUsize::new(0) }.release(drv, true);
                    return Err(e);
                }
            };
            slots.push(Mutex::new(Slot { host, done, poisoned: false }));
        }
        Ok(Staging { slots, next: AtomicUsize::new(0) })
    }

    /// A usable slot, locked: the next in the ring that is not poisoned.
    fn take(&self) -> Result<std::sync::MutexGuard<'_, Slot>> {
        for _ in 0..self.slots.len() {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
            // A panic while a slot was held poisons the lock, not the slot: its state is intact.
            let slot = self.slots[i].lock().unwrap_or_else(|e| e.into_inner());
            if !slot.poisoned {
                return Ok(slot);
            }
        }
        Err(Error::Device { code: -1, message: "every pinned staging slot is unusable after earlier device errors (recreate the backend)".into() })
    }

    /// Waits for the slot's last copy; poisons the slot when that cannot be known.
    fn wait(drv: &dyn Driver, slot: &mut Slot) -> Result<()> {
        drv.event_sync(slot.done).inspect_err(|_| slot.poisoned = true)
    }

    /// Queues copies of `data` to device address `dst` on stream `s`. Returns once the bytes are
    /// in pinned memory; the copies complete in stream order.
    pub fn upload(&self, drv: &dyn Driver, s: u64, dst: u64, data: &[u8]) -> Result<()> {
        for (i, chunk) in data.chunks(STAGE_BYTES).enumerate() {
            let mut slot = self.take()?;
            Self::wait(drv, &mut slot)?;
            // SAFETY: the slot holds STAGE_BYTES >= chunk.len() pinned bytes, and no copy reads
            // them any more (its last one completed: `wait`).
            unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), slot.host, chunk.len()) };
            let at = dst + (i * STAGE_BYTES) as u64;
            // SAFETY: the caller checked `dst..dst + data.len()`; the slot stays untouched until
            // the event recorded next completes.
            unsafe { drv.htod(at, slot.host, chunk.len(), s) }?;
            // The copy is queued: if its completion cannot be tracked, the slot must never be
            // written again.
            drv.event_record(slot.done, s).inspect_err(|_| slot.poisoned = true)?;
        }
        Ok(())
    }

    /// Copies `out.len()` bytes from device address `src` into `out`, waiting for them (and for
    /// the work queued before them on `s`).
    pub fn download(&self, drv: &dyn Driver, s: u64, src: u64, out: &mut [u8]) -> Result<()> {
        for (i, chunk) in out.chunks_mut(STAGE_BYTES).enumerate() {
            let mut slot = self.take()?;
            Self::wait(drv, &mut slot)?;
            // SAFETY: the caller checked the device range; the slot stays allocated until the
            // copy is known complete (a slot whose copy may be pending is poisoned, never freed).
            unsafe { drv.dtoh(slot.host, src + (i * STAGE_BYTES) as u64, chunk.len(), s) }?;
            drv.event_record(slot.done, s).inspect_err(|_| slot.poisoned = true)?;
            Self::wait(drv, &mut slot)?;
            // SAFETY: the copy into the slot completed (`wait`).
            unsafe { std::ptr::copy_nonoverlapping(slot.host, chunk.as_mut_ptr(), chunk.len()) };
        }
        Ok(())
    }

    /// Frees the slots when `drained` (the stream finished every copy, poisoned slots' too);
    /// otherwise leaks them: a copy may still target them.
    pub fn release(&mut self, drv: &dyn Driver, drained: bool) {
        for m in self.slots.drain(..) {
            let slot = m.into_inner().unwrap_or_else(|e| e.into_inner());
            if drained {
                drv.event_destroy(slot.done);
                // SAFETY: every copy on the stream completed, none targets the slot.
                unsafe { drv.pinned_free(slot.host) };
            }
        }
    }
}
