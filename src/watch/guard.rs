//! The empty-file guard. An editor that truncates before writing, a failed
//! `git checkout`, or a save of the wrong buffer can leave a file that parses
//! but declares no VMs; with `--prune` that would destroy everything. Watch
//! refuses such a file unless `--allow-empty` says it is meant. Reconcile has
//! the same guard; this one stops the file before it gets that far.

/// The user's safety flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Safety {
    /// Destroy VMs removed from the file.
    pub prune: bool,
    /// Let a file with no VMs through.
    pub allow_empty: bool,
}

/// What may happen with a file that loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Reconcile, with these options.
    Apply { prune: bool, allow_empty: bool },
    /// The file declares no VMs: change nothing.
    RefuseEmpty,
}

/// Decide from the number of VMs the file declares.
pub fn decide(vms: usize, safety: Safety) -> Gate {
    if vms == 0 && !safety.allow_empty {
        return Gate::RefuseEmpty;
    }
    Gate::Apply {
        prune: safety.prune,
        allow_empty: safety.allow_empty,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_refused_even_with_prune() {
        for prune in [false, true] {
            let s = Safety {
                prune,
                allow_empty: false,
            };
            assert_eq!(decide(0, s), Gate::RefuseEmpty);
        }
    }

    #[test]
    fn allow_empty_lets_it_through_with_the_users_prune() {
        let s = Safety {
            prune: true,
            allow_empty: true,
        };
        assert_eq!(
            decide(0, s),
            Gate::Apply {
                prune: true,
                allow_empty: true
            }
        );
    }

    #[test]
    fn a_file_with_vms_keeps_the_users_flags() {
        assert_eq!(
            decide(1, Safety::default()),
            Gate::Apply {
                prune: false,
                allow_empty: false
            }
        );
        let s = Safety {
            prune: true,
            allow_empty: false,
        };
        assert_eq!(
            decide(3, s),
            Gate::Apply {
                prune: true,
                allow_empty: false
            }
        );
    }
}
