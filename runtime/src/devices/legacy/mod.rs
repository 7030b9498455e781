//! Small platform devices a PC guest expects: the ACPI power (sleep/reset)
//! register, the i8042 controller's reset line, the ACPI GED event
//! register the VMM uses to ask for a graceful shutdown or announce hot-add,
//! the CPU and memory hotplug controllers, and vmctl's serial batch port.

pub mod cpu_hotplug;
pub mod ged;
pub mod i8042;
pub mod memory_hotplug;
pub mod power;
pub mod serial_batch;

pub use cpu_hotplug::{CpuHotplug, CpuHotplugDevice, CpuHotplugError};
pub use ged::{GED_POWER_BUTTON, GedDevice};
pub use i8042::I8042Device;
pub use memory_hotplug::{MemoryHotplug, MemoryHotplugDevice, MemoryHotplugError, MemorySlot};
pub use power::PowerDevice;

/// Copy `data.len()` bytes of `image` from `offset` (zeros past its end).
pub(crate) fn read_image(image: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = image.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// The first up-to-4 bytes of `data`, little-endian, zero-extended.
pub(crate) fn le_u32(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}
