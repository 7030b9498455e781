//! Hot-add and hot-remove from the control plane's side: ask the VM's VMM
//! (which answers once the guest has acknowledged through the hotplug
//! controller), then wait until the guest's *own* report shows the change
//! (its CPUs online, its memory there), and only then record the new value
//! in `vm.json` — so a killed apply re-plans from what the guest really has.

use std::time::{Duration, Instant};

use crate::api::ApiClient;
use crate::facade::{RunState, Runtime, RuntimeError};

/// How long the VMM waits for the guest's acknowledgement, and then the
/// control plane for the guest's report.
pub const GUEST_WAIT: Duration = crate::vmm::hotplug::GUEST_ACK_TIMEOUT;

fn fail(vm: &str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Hotplug {
        vm: vm.into(),
        message: message.into(),
    }
}

/// The guest's latest report, if it has one.
fn report(client: &ApiClient) -> Option<serde_json::Value> {
    client.status().ok().and_then(|s| s.guest)
}

fn field(report: &serde_json::Value, name: &str) -> Option<u64> {
    report.get(name).and_then(serde_json::Value::as_u64)
}

/// Wait until the guest's report satisfies `ok`.
fn wait_for_guest(
    vm: &str,
    client: &ApiClient,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> Result<(), RuntimeError> {
    let deadline = Instant::now() + GUEST_WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(r) = report(client) {
            if ok(&r) {
                return Ok(());
            }
            last = Some(r);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(fail(
        vm,
        format!(
            "the guest did not report {what} within {} s (last report: {})",
            GUEST_WAIT.as_secs(),
            last.map(|r| r.to_string()).unwrap_or_else(|| "none".into())
        ),
    ))
}

/// The VMM's status once no hot-add is in flight: an apply that was killed
/// while its change waited for the guest left that change running, and the
/// next apply must see where it ended before it asks for its own.
fn settled_status(
    vm: &str,
    client: &ApiClient,
    status: Option<crate::api::Status>,
) -> Result<crate::api::Status, RuntimeError> {
    let deadline = Instant::now() + GUEST_WAIT + Duration::from_secs(5);
    let mut status = match status {
        Some(s) => s,
        None => client.status().map_err(|e| fail(vm, e.to_string()))?,
    };
    while let Some(what) = &status.hotplug_in_flight {
        if Instant::now() >= deadline {
            return Err(fail(
                vm,
                format!(
                    "a change left by an earlier apply ({what}) is still waiting for the guest"
                ),
            ));
        }
        tracing::info!(vm, what, "waiting for the hot-add an earlier apply started");
        std::thread::sleep(Duration::from_millis(50));
        status = client.status().map_err(|e| fail(vm, e.to_string()))?;
    }
    Ok(status)
}

/// Memory a guest reports after `added` MiB were hot-added to `before`:
/// Linux's MemTotal grows by the block minus its page structures (1/64),
/// diag by exactly `added`. 1/16 of slack covers both.
fn memory_reached(report: &serde_json::Value, before: u64, added: u64) -> bool {
    let want = before + added - added / 16;
    let seen = field(report, "memory_mib").unwrap_or(0);
    // A guest that verifies its memory (diag) must have verified it too.
    let verified = field(report, "memory_verified_mib").unwrap_or(seen);
    seen >= want && verified >= want
}

impl Runtime {
    /// A client for the running VM `name`, with the status observe just
    /// fetched from it (None if it did not answer).
    fn running_client(
        &self,
        name: &str,
        action: &'static str,
    ) -> Result<(ApiClient, Option<crate::api::Status>), RuntimeError> {
        let Some(obs) = self.observe(name)? else {
            return Err(RuntimeError::NoSuchVm(name.into()));
        };
        if obs.live != RunState::Running {
            return Err(RuntimeError::Busy {
                name: name.into(),
                state: obs.live.as_str(),
                action,
            });
        }
        Ok((ApiClient::new(self.vm_dir(name).api_sock()), obs.status))
    }

    /// Make `cpus` vCPUs present in the running VM `name` (hot-add, or
    /// hot-remove down to 1), wait until the guest reports that many online,
    /// and record it.
    pub fn hot_add_cpu(&self, name: &str, cpus: u32) -> Result<(), RuntimeError> {
        let (client, status) = self.running_client(name, "hot-add vCPUs")?;
        settled_status(name, &client, status)?;
        client
            .hot_add_cpu(cpus, GUEST_WAIT)
            .map_err(|e| fail(name, e.to_string()))?;
        wait_for_guest(name, &client, &format!("{cpus} vCPUs online"), |r| {
            field(r, "cpus") == Some(u64::from(cpus))
        })?;
        self.record_change(name, |spec| spec.cpus = cpus)
    }

    /// Grow the running VM `name`'s RAM to `memory_mib`, wait until the
    /// guest reports it, and record it.
    pub fn hot_add_memory(&self, name: &str, memory_mib: u64) -> Result<(), RuntimeError> {
        let (client, status) = self.running_client(name, "hot-add memory")?;
        let status = settled_status(name, &client, status)?;
        let before_vmm = status.memory_mib;
        let before_guest = status
            .guest
            .as_ref()
            .and_then(|r| field(r, "memory_mib"))
            .unwrap_or(before_vmm);
        client
            .hot_add_memory(memory_mib, GUEST_WAIT)
            .map_err(|e| fail(name, e.to_string()))?;
        let added = memory_mib.saturating_sub(before_vmm);
        wait_for_guest(name, &client, &format!("{added} MiB more memory"), |r| {
            memory_reached(r, before_guest, added)
        })?;
        self.record_change(name, |spec| spec.memory_mib = memory_mib)
    }

    fn record_change(
        &self,
        name: &str,
        change: impl FnOnce(&mut vmctl_spec::model::VmSpec),
    ) -> Result<(), RuntimeError> {
        let dir = self.vm_dir(name);
        let mut rec = dir.read_record()?;
        change(&mut rec.spec);
        Ok(dir.write_record(&rec)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn memory_counts_only_when_the_guest_shows_it() {
        // diag: exact, and verified.
        let diag = json!({"memory_mib": 768, "memory_verified_mib": 768});
        assert!(memory_reached(&diag, 256, 512));
        let unverified = json!({"memory_mib": 768, "memory_verified_mib": 256});
        assert!(!memory_reached(&unverified, 256, 512));
        // Linux: MemTotal 218 MiB at boot (256 declared), + 512 MiB block.
        assert!(memory_reached(&json!({"memory_mib": 218 + 504}), 218, 512));
        assert!(!memory_reached(&json!({"memory_mib": 218}), 218, 512));
    }
}
