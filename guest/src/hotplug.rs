//! CPU and memory hot-add, as the guest will see it: cloud-hypervisor's CPU
//! hotplug controller at `CPU_HOTPLUG_BASE` and memory hotplug controller at
//! `MEMORY_HOTPLUG_BASE`, announced through the GED. The VMM does not
//! implement them yet, so these are stubs the poll loop already calls; when
//! the controllers exist, read their registers here and report the result
//! (onlining new CPUs would go through `smp`).

/// Extra CPUs and memory the hotplug controllers say were added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hotplug {
    pub added_cpus: u32,
    pub added_memory_bytes: u64,
}

/// Polls the hotplug controllers. Stub: nothing is read yet, so nothing
/// reads device space that may not be there.
pub fn poll() -> Hotplug {
    Hotplug::default()
}
