//! Reading guest-physical memory through a trait, so the table parsers
//! (e820, ACPI) run the same on the host in unit tests (over a byte vector)
//! and in the guest (over the VMM's identity map). Every read is
//! bounds-checked: addresses come from tables the VMM wrote, and a wild read
//! outside the identity map would fault with no IDT to catch it.

/// Physical memory the parsers may read.
pub trait PhysMem {
    /// Fills `buf` from physical address `addr`; false if any byte of the
    /// range is not readable (nothing is guaranteed about `buf` then).
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;

    fn read_u8(&self, addr: u64) -> Option<u8> {
        let mut b = [0u8; 1];
        self.read(addr, &mut b).then_some(b[0])
    }

    fn read_u16(&self, addr: u64) -> Option<u16> {
        let mut b = [0u8; 2];
        self.read(addr, &mut b).then(|| u16::from_le_bytes(b))
    }

    fn read_u32(&self, addr: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b).then(|| u32::from_le_bytes(b))
    }

    fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b).then(|| u64::from_le_bytes(b))
    }
}

/// The guest's own view: the first 4 GiB, identity-mapped by the VMM.
/// Reads stop short of the MMIO hole so a table pointer cannot make diag
/// poke device registers.
pub struct IdentityMap;

/// Lowest address treated as device space rather than table memory.
const DEVICE_SPACE_START: u64 = 0xc000_0000;

impl PhysMem for IdentityMap {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(end) = addr.checked_add(buf.len() as u64) else {
            return false;
        };
        if addr == 0 || end > DEVICE_SPACE_START {
            return false;
        }
        for (i, slot) in buf.iter_mut().enumerate() {
            // SAFETY: [addr, end) is below 3 GiB, inside the identity map
            // the VMM set up; reading RAM (or a hole the VMM answers as
            // MMIO) has no side effects.
            *slot = unsafe { core::ptr::read_volatile((addr + i as u64) as *const u8) };
        }
        true
    }
}

/// Test memory: `bytes` placed at physical address `base`.
#[cfg(test)]
pub struct Fake {
    pub base: u64,
    pub bytes: Vec<u8>,
}

#[cfg(test)]
impl Fake {
    pub fn new(base: u64, len: usize) -> Self {
        Self {
            base,
            bytes: vec![0; len],
        }
    }

    pub fn write(&mut self, addr: u64, data: &[u8]) {
        let off = (addr - self.base) as usize;
        self.bytes[off..off + data.len()].copy_from_slice(data);
    }
}

#[cfg(test)]
impl PhysMem for Fake {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(off) = addr.checked_sub(self.base) else {
            return false;
        };
        let Ok(off) = usize::try_from(off) else {
            return false;
        };
        match off
            .checked_add(buf.len())
            .and_then(|end| self.bytes.get(off..end))
        {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}
