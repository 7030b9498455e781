//! Property: any valid resolved state, rendered to KDL and parsed again, is the
//! same state; and it survives JSON (the `validate --json` contract) unchanged.

mod common;

use std::path::Path;

use common::states::state;
use proptest::prelude::*;
use vmctl_spec::DesiredState;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn render_then_parse_is_identity(s in state()) {
        let text = vmctl_spec::to_kdl(&s);
        let loaded = vmctl_spec::parse_str("gen.kdl", &text, Path::new("/base"), u32::MAX)
            .map_err(|e| TestCaseError::fail(format!("{e:?}\n{text}")))?;
        prop_assert_eq!(&loaded.state, &s, "{}", text);
        prop_assert!(loaded.warnings.is_empty());

        let json = serde_json::to_string_pretty(&loaded.state).unwrap();
        let back: DesiredState = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, s);
    }
}
