//! A byte budget: callers reserve the most memory an activity can hold (a connection's
//! buffers, a request's) before starting it, and give it back when it ends. A reservation
//! that does not fit is refused at once, so the sum of what is reserved never exceeds the
//! budget however many clients arrive; the caller turns a refusal into a closed
//! connection or a 503.
//!
//! The budget counts worst cases, not live bytes: it bounds memory without measuring it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fixed number of bytes shared by everything reserving from it.
pub struct MemoryBudget {
    limit: usize,
    reserved: AtomicUsize,
    refusals: AtomicUsize,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit,
            reserved: AtomicUsize::new(0),
            refusals: AtomicUsize::new(0),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved now.
    pub fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Relaxed)
    }

    /// Reservations refused so far for want of room.
    pub fn refusals(&self) -> usize {
        self.refusals.load(Ordering::Relaxed)
    }

    /// Reserves `bytes`, or None when they do not fit.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        if self.try_add(bytes) {
            Some(Reservation {
                budget: self.clone(),
                bytes,
            })
        } else {
            None
        }
    }

    fn try_add(&self, bytes: usize) -> bool {
        let added = self
            .reserved
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |reserved| {
                reserved
                    .checked_add(bytes)
                    .filter(|&total| total <= self.limit)
            });
        if added.is_err() {
            self.refusals.fetch_add(1, Ordering::Relaxed);
        }
        added.is_ok()
    }

    fn release(&self, bytes: usize) {
        self.reserved.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl fmt::Debug for MemoryBudget {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("MemoryBudget")
            .field("limit", &self.limit)
            .field("reserved", &self.reserved())
            .finish()
    }
}

/// Bytes held from a [`MemoryBudget`] until dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Raises this reservation to `bytes` in total (a buffer that grew); false, with the
    /// reservation unchanged, when the difference does not fit.
    pub fn grow_to(&mut self, bytes: usize) -> bool {
        if bytes <= self.bytes {
            return true;
        }
        if self.budget.try_add(bytes - self.bytes) {
            self.bytes = bytes;
            true
        } else {
            false
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_never_exceed_the_limit_and_come_back_when_dropped() {
        let budget = MemoryBudget::new(100);
        let first = budget.try_reserve(60).expect("fits");
        assert!(budget.try_reserve(41).is_none());
        assert_eq!(budget.refusals(), 1);
        let mut second = budget.try_reserve(40).expect("fits exactly");
        assert_eq!(budget.reserved(), 100);
        assert!(!second.grow_to(41));
        assert_eq!(second.bytes(), 40);
        drop(first);
        assert!(second.grow_to(90));
        assert_eq!(budget.reserved(), 90);
        assert!(budget.try_reserve(usize::MAX).is_none(), "no overflow");
        drop(second);
        assert_eq!(budget.reserved(), 0);
    }
}
