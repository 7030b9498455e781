//! `cargo xtask`: developer tasks that are not part of the vmctl binary.

fn main() {
    eprintln!("usage: cargo xtask nested-lab [--lab FILE]");
    std::process::exit(2);
}
