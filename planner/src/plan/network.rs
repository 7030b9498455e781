//! Networks in the plan: one action per declared or recorded network
//! (create, re-address, destroy) and the edges that put a VM after the
//! networks it plugs into and a network's removal after its last VM.

use std::collections::HashMap;

use vmctl_spec::{DesiredState, NetworkSpec};

use super::{Action, Builder, Resource, action};
use crate::capabilities::{self, ActionKind, Attribute, Condition, Disruption};
use crate::observed::{ObservedNetwork, ObservedState};

fn net_action(name: &str, kind: ActionKind, disruption: Disruption) -> Action {
    Action {
        id: format!("network:{name}:{}", kind.label()),
        resource: Resource::Network,
        ..action(name, kind, disruption)
    }
}

/// How a network's subnet and NAT read in the plan.
fn network_text(n: &NetworkSpec) -> String {
    if n.nat {
        format!("{} nat", n.subnet)
    } else {
        n.subnet.to_string()
    }
}

/// The network actions, by network name.
#[derive(Default)]
pub(super) struct NetActs {
    /// Create or re-address: VMs that plug into it come after.
    up: HashMap<String, usize>,
    /// Destroy: after every VM that leaves it.
    down: HashMap<String, usize>,
}

/// A network is created when declared and not recorded (or its bridge is
/// gone), re-addressed when its subnet or NAT changed, destroyed when no
/// longer declared.
pub(super) fn plan_networks(
    b: &mut Builder,
    desired: &DesiredState,
    observed: &ObservedState,
) -> NetActs {
    let mut acts = NetActs::default();
    for n in &desired.networks {
        let seen: Option<&ObservedNetwork> = observed.networks.get(&n.name);
        let (cond, kind, before) = match seen {
            None => (Condition::New, ActionKind::Create, None),
            Some(o) if o.spec != *n => (Condition::Changed, ActionKind::Replace, Some(o)),
            Some(o) if !o.present => (Condition::Missing, ActionKind::Create, Some(o)),
            Some(_) => continue,
        };
        let Some(row) = capabilities::row(Attribute::Network, cond) else {
            continue;
        };
        let mut a = net_action(&n.name, kind, row.disruption);
        let before_text = before.map(|o| network_text(&o.spec)).unwrap_or_default();
        // A new network names the bridge's address, a changed one its
        // subnet before and after.
        let after = match cond {
            Condition::New => format!("{}/{}", n.host_ip, n.subnet.prefix()),
            _ => network_text(n),
        };
        a.reason = Some(capabilities::fill(
            row.reason,
            &[("before", &before_text), ("after", &after)],
        ));
        a.network = Some(n.clone());
        a.network_old = before.map(|o| o.spec.clone());
        let i = b.push(a);
        acts.up.insert(n.name.clone(), i);
    }
    for (name, o) in &observed.networks {
        if desired.network(name).is_some() {
            continue;
        }
        let Some(row) = capabilities::row(Attribute::Network, Condition::Gone) else {
            continue;
        };
        let mut a = net_action(name, ActionKind::Destroy, row.disruption);
        a.reason = Some(row.reason.to_string());
        a.network_old = Some(o.spec.clone());
        let i = b.push(a);
        acts.down.insert(name.clone(), i);
    }
    acts
}

/// A VM comes up after the networks its NICs plug into; a network goes
/// after every VM that was on it has been destroyed or moved off it.
pub(super) fn network_edges(b: &mut Builder, nets: &NetActs) {
    let mut edges = Vec::new();
    for (i, a) in b.actions.iter().enumerate() {
        if a.is_network() || a.is_refused() {
            continue;
        }
        if a.is_up()
            && let Some(new) = &a.new
        {
            for nic in &new.nics {
                if let Some(&n) = nets.up.get(&nic.network) {
                    edges.push((n, i));
                }
            }
        }
        if let Some(old) = &a.old {
            for nic in &old.nics {
                if let Some(&n) = nets.down.get(&nic.network) {
                    edges.push((i, n));
                }
            }
        }
    }
    b.edges.extend(edges);
}
