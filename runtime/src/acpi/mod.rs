//! ACPI tables: how the guest discovers CPUs, serial ports and virtio-mmio devices.
