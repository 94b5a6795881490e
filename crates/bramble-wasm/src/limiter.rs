//! The store's resource limiter: caps a task's linear memory, and remembers a refused
//! growth so that the trap which usually follows (an allocator aborting) is reported as
//! the memory limit it really is.

use wasmi::ResourceLimiter;
use wasmi::errors::{MemoryError, TableError};
use wasmi_core::LimiterError;

/// Most table entries a module may have (function pointers: Rust modules have a few
/// hundred). Tables are not counted in the memory limit, so they get their own bound.
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// A refusing `ResourceLimiter`: growth past the cap makes `memory.grow` return -1, as the
/// WebAssembly specification says, and is remembered in `denied`.
#[derive(Debug)]
pub struct MemoryCap {
    limit_bytes: u64,
    /// The largest size, in bytes, that the module asked for and was refused.
    pub denied: Option<u64>,
}

impl MemoryCap {
    pub fn new(limit_bytes: u64) -> Self {
        MemoryCap {
            limit_bytes,
            denied: None,
        }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool, LimiterError> {
        let desired = desired as u64;
        if desired > self.limit_bytes {
            self.denied = Some(self.denied.map_or(desired, |d| d.max(desired)));
            return Ok(false);
        }
        // The module's own declared maximum is enforced by wasmi itself.
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool, LimiterError> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn memory_grow_failed(&mut self, _error: &MemoryError) -> Result<(), LimiterError> {
        Ok(())
    }

    fn table_grow_failed(&mut self, _error: &TableError) -> Result<(), LimiterError> {
        Ok(())
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        100
    }

    fn memories(&self) -> usize {
        1
    }
}
