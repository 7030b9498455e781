//! The KVM VM and its vCPUs.
