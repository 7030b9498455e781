//! Assembling and running one VM inside the `__vmm` process.
