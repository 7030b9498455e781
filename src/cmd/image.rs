//! `vmctl image`: build, list and remove boot images in the image cache.

use std::process::ExitCode;

use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_g: &Global, _args: Args) -> miette::Result<ExitCode> {
    Err(miette::miette!("`vmctl image` is not implemented yet"))
}
