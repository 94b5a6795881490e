//! Bounds-checked access to a guest's linear memory. Every pointer and length a module
//! hands the host goes through here: one outside the memory is `EFAULT`, never a panic.

use crate::wasi::errno::{self, Errno};

/// A guest's linear memory for the length of one host call.
pub struct GuestMemory<'m> {
    bytes: &'m mut [u8],
}

impl<'m> GuestMemory<'m> {
    pub fn new(bytes: &'m mut [u8]) -> Self {
        GuestMemory { bytes }
    }

    /// The range `[ptr, ptr + len)` as host indices, or `EFAULT` if any of it lies
    /// outside the memory (including when `ptr + len` overflows).
    fn range(&self, ptr: u32, len: u64) -> Result<std::ops::Range<usize>, Errno> {
        let start = u64::from(ptr);
        let end = start.checked_add(len).ok_or(errno::FAULT)?;
        if end > self.bytes.len() as u64 {
            return Err(errno::FAULT);
        }
        // Both fit in usize: they are at most the memory's length.
        let start = usize::try_from(start).map_err(|_| errno::FAULT)?;
        let end = usize::try_from(end).map_err(|_| errno::FAULT)?;
        Ok(start..end)
    }

    pub fn slice(&self, ptr: u32, len: u32) -> Result<&[u8], Errno> {
        let range = self.range(ptr, u64::from(len))?;
        Ok(&self.bytes[range])
    }

    pub fn slice_mut(&mut self, ptr: u32, len: u32) -> Result<&mut [u8], Errno> {
        let range = self.range(ptr, u64::from(len))?;
        Ok(&mut self.bytes[range])
    }

    /// Checks that `len` bytes at `ptr` are inside the memory without borrowing them.
    pub fn check(&self, ptr: u32, len: u64) -> Result<(), Errno> {
        self.range(ptr, len).map(|_| ())
    }

    pub fn read_u32(&self, ptr: u32) -> Result<u32, Errno> {
        let range = self.range(ptr, 4)?;
        let mut word = [0u8; 4];
        word.copy_from_slice(&self.bytes[range]);
        Ok(u32::from_le_bytes(word))
    }

    pub fn write_bytes(&mut self, ptr: u32, data: &[u8]) -> Result<(), Errno> {
        let range = self.range(ptr, data.len() as u64)?;
        self.bytes[range].copy_from_slice(data);
        Ok(())
    }

    pub fn write_u32(&mut self, ptr: u32, value: u32) -> Result<(), Errno> {
        self.write_bytes(ptr, &value.to_le_bytes())
    }

    pub fn write_u64(&mut self, ptr: u32, value: u64) -> Result<(), Errno> {
        self.write_bytes(ptr, &value.to_le_bytes())
    }

    /// The `(buf, buf_len)` pairs of a WASI `iovec`/`ciovec` array of `count` entries at
    /// `ptr`, each checked to lie inside the memory.
    pub fn iovecs(&self, ptr: u32, count: u32) -> Result<Vec<(u32, u32)>, Errno> {
        self.check(ptr, u64::from(count) * 8)?;
        let mut out = Vec::with_capacity(count as usize);
        for i in 0..count {
            // In range: checked above, and i * 8 + 4 < count * 8.
            let entry = ptr + i * 8;
            let buf = self.read_u32(entry)?;
            let len = self.read_u32(entry + 4)?;
            self.check(buf, u64::from(len))?;
            out.push((buf, len));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_is_efault() {
        let mut bytes = vec![0u8; 16];
        let mut mem = GuestMemory::new(&mut bytes);
        assert!(mem.slice(0, 16).is_ok());
        assert_eq!(mem.slice(1, 16).err(), Some(errno::FAULT));
        assert_eq!(mem.slice(u32::MAX, u32::MAX).err(), Some(errno::FAULT));
        assert_eq!(mem.read_u32(13).err(), Some(errno::FAULT));
        assert!(mem.read_u32(12).is_ok());
        assert_eq!(mem.write_u64(9, 1).err(), Some(errno::FAULT));
        assert!(mem.write_u64(8, 0x0102_0304_0506_0708).is_ok());
        assert_eq!(mem.read_u32(8), Ok(0x0506_0708));
        assert!(mem.slice(16, 0).is_ok());
        assert_eq!(mem.slice(17, 0).err(), Some(errno::FAULT));
    }

    #[test]
    fn iovec_pointing_outside_is_efault() {
        let mut bytes = vec![0u8; 64];
        let mut mem = GuestMemory::new(&mut bytes);
        // One ciovec at 0: buf 32, len 16 (fits).
        mem.write_u32(0, 32).unwrap();
        mem.write_u32(4, 16).unwrap();
        assert_eq!(mem.iovecs(0, 1), Ok(vec![(32, 16)]));
        // len 33 runs past the end.
        mem.write_u32(4, 33).unwrap();
        assert_eq!(mem.iovecs(0, 1).err(), Some(errno::FAULT));
        // The array itself past the end; a count whose byte size overflows u32.
        assert_eq!(mem.iovecs(60, 1).err(), Some(errno::FAULT));
        assert_eq!(mem.iovecs(0, u32::MAX).err(), Some(errno::FAULT));
    }
}
