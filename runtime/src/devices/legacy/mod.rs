//! Small platform devices a PC guest expects: the ACPI power (sleep/reset)
//! register, the i8042 controller's reset line, and the ACPI GED event
//! register the VMM uses to ask for a graceful shutdown.

pub mod ged;
pub mod i8042;
pub mod power;

pub use ged::{GED_POWER_BUTTON, GedDevice};
pub use i8042::I8042Device;
pub use power::PowerDevice;
