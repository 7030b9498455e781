//! The built-in diag guest, built from guest/ by build.rs and embedded here.
