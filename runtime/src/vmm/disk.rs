//! Live disk grow: extend the file, set the capacity the guest sees and
//! notify the driver (virtio config change).

use super::serve::Vmm;

impl Vmm {
    /// Grow `disk` to `size_bytes`. Requests come from the control socket:
    /// checked, never trusted.
    pub(super) fn resize_disk(&mut self, disk: &str, size_bytes: u64) -> Result<u64, String> {
        let Some(index) = self.cfg.disks.iter().position(|d| d.name == disk) else {
            return Err(format!("no disk named {disk:?}"));
        };
        if size_bytes == 0 || !size_bytes.is_multiple_of(512) {
            return Err(format!(
                "{size_bytes} bytes is not a whole number of 512-byte sectors"
            ));
        }
        let dev = self
            .machine
            .disks
            .get(index)
            .ok_or_else(|| format!("disk {disk:?} has no device"))?;
        let mut dev = dev
            .lock()
            .map_err(|_| "the disk device is poisoned".to_string())?;
        let current = dev.device_mut().capacity_bytes();
        if size_bytes < current {
            return Err(format!(
                "disk {disk:?} is {current} bytes; shrinking to {size_bytes} would lose data"
            ));
        }
        if size_bytes > current {
            dev.device_mut()
                .resize(size_bytes)
                .map_err(|e| e.to_string())?;
            dev.notify_config_change();
            tracing::info!(disk, size_bytes, "disk grown live");
        }
        Ok(size_bytes)
    }
}
