//! `vmctl explain`: print the capability table — for every kind of change,
//! whether it is applied live, needs a restart, a replace, or is refused, and
//! why. It is the same table the planner decides with.

use std::process::ExitCode;

use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_g: &Global, _args: Args) -> miette::Result<ExitCode> {
    crate::cmd::print_stdout(&vmctl_planner::capabilities::markdown())?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    /// The README embeds the table; regenerate it with `vmctl explain` when
    /// the table changes.
    #[test]
    fn readme_embeds_the_current_capability_table() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("<!-- capabilities:start -->\n")
            .expect("README has the capabilities start marker")
            + "<!-- capabilities:start -->\n".len();
        let end = readme
            .find("<!-- capabilities:end -->")
            .expect("README has the capabilities end marker");
        assert_eq!(
            &readme[start..end],
            vmctl_planner::capabilities::markdown(),
            "README's capability table is stale: paste the output of `vmctl explain`"
        );
    }
}
