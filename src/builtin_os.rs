//! The built-in Linux OSes, plugged into the runtime: the runtime boots
//! kernels and copies disk files, `vmctl-image` builds and caches images;
//! this adapter (the only place both meet) tells the runtime which image a
//! VM boots, what its root disk starts as, and writes the VM's first-boot
//! configuration into that disk before each start; and it reads `disk
//! source=` images in other formats than raw (`vmctl_image::disk_format`).

use std::path::{Path, PathBuf};

use vmctl_image::disk_format;
use vmctl_image::{Recipe, Variant};
use vmctl_runtime::os::{GuestNic, OsProvider, SourceImage};
use vmctl_spec::model::{DiskSpec, ImageSpec, SourceFormat, VmSpec};

/// The disk a `debian-12` VM's root filesystem lives on (the OS profile's).
pub const ROOT_DISK: &str = "root";

#[derive(Debug)]
pub struct BuiltinOs {
    state_dir: PathBuf,
}

impl BuiltinOs {
    pub fn new(state_dir: &Path) -> Self {
        BuiltinOs {
            state_dir: std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf()),
        }
    }

    fn image(&self, spec: &VmSpec) -> Result<Option<vmctl_image::BootImage>, String> {
        if spec.image.is_some() || Recipe::of(&spec.os).is_none() {
            return Ok(None);
        }
        let variant = Variant::new(&spec.os, &spec.packages);
        vmctl_image::for_vm(&self.state_dir, &variant)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

impl OsProvider for BuiltinOs {
    fn boot_image(&self, spec: &VmSpec) -> Result<Option<ImageSpec>, String> {
        Ok(self.image(spec)?.map(|img| img.to_image_spec()))
    }

    fn disk_source(&self, spec: &VmSpec, disk: &DiskSpec) -> Result<Option<PathBuf>, String> {
        if disk.name != ROOT_DISK {
            return Ok(None);
        }
        Ok(self.image(spec)?.and_then(|img| img.rootfs))
    }

    fn configure(
        &self,
        spec: &VmSpec,
        disks: &[(DiskSpec, PathBuf)],
        nics: &[GuestNic],
    ) -> Result<(), String> {
        if Recipe::of(&spec.os) != Some(Recipe::Full) || spec.image.is_some() {
            return Ok(());
        }
        let Some((_, path)) = disks.iter().find(|(d, _)| d.name == ROOT_DISK) else {
            return Err(format!(
                "a {} VM needs its `{ROOT_DISK}` disk (its root filesystem)",
                spec.os
            ));
        };
        let nics = nics
            .iter()
            .map(|n| vmctl_image::guest_config::NicConfig {
                network: n.network.clone(),
                mac: n.mac.clone(),
                address: n.address.clone(),
                gateway: n.nat.then(|| n.host_address.clone()),
            })
            .collect();
        let json = vmctl_image::guest_config::ConfigFile::of(spec, nics).to_json();
        // Unchanged: leave the disk alone (no write, no new inode).
        if vmctl_image::guest_config::read_from(path)
            .map_err(|e| e.to_string())?
            .as_deref()
            == Some(&json[..])
        {
            return Ok(());
        }
        vmctl_image::guest_config::write_into(path, &json)
            .map_err(|e| format!("writing its configuration into {}: {e}", path.display()))
    }

    fn inspect_source(
        &self,
        path: &Path,
        declared: Option<SourceFormat>,
    ) -> Result<SourceImage, String> {
        let i = disk_format::inspect(path, declared).map_err(|e| e.to_string())?;
        Ok(SourceImage {
            format: i.format,
            virtual_size: i.virtual_size,
        })
    }

    fn convert_source(&self, path: &Path, image: &SourceImage, to: &Path) -> Result<(), String> {
        let i = disk_format::Inspected {
            format: image.format,
            virtual_size: image.virtual_size,
        };
        disk_format::convert_to_raw(path, &i, to).map_err(|e| e.to_string())
    }
}
