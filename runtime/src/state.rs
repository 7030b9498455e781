//! The state directory layout and the per-VM files in it.
