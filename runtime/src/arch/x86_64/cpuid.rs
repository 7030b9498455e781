//! CPUID each vCPU sees: KVM's supported set, normalized per vCPU so the guest
//! finds its own APIC ID everywhere and a topology of `count` single-thread
//! cores in one socket, the hypervisor bit, and no nested virtualization
//! (VMX/SVM cleared).
//!
//! `KVM_GET_SUPPORTED_CPUID` does not describe a topology: since Linux 6.1 it
//! returns leaf 0xB (and 0x1F) as subleaf 0 with EAX = EBX = ECX = 0 and no
//! subleaf 1 ("no topology"), and AMD's 0x8000_001E zeroed. Rewriting only the
//! entries that exist (what this module did first) left guests without a
//! core level: on AMD every vCPU claimed core 0, so a 2-vCPU guest saw one
//! core with two threads. [`normalize`] therefore *inserts* the topology
//! leaves it needs, as Firecracker and cloud-hypervisor do.
//!
//! The unit tests feed [`KVM_61_AMD_FIXTURE`], the table a real Linux 6.1
//! KVM (kvm-amd under QEMU's EPYC model, the nested lab's L1) returned from
//! `vmctl __kvm-cpuid`, not synthetic leaves that already hold the answer.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_MAX: u32 = 0x8000_0000;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_EXT_ADDR_SIZES: u32 = 0x8000_0008;
const LEAF_EXT_APIC_ID: u32 = 0x8000_001e;

/// `kvm_cpuid_entry2.flags`: the leaf has subleaves (ECX is an input).
pub const KVM_CPUID_FLAG_SIGNIFCANT_INDEX: u32 = 1;

const ECX_VMX: u32 = 1 << 5;
const ECX_PDCM: u32 = 1 << 15;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const EXT_ECX_SVM: u32 = 1 << 2;
const EXT_ECX_TOPOEXT: u32 = 1 << 22;
/// CLFLUSH line size in 8-byte units (EBX[15:8] of leaf 1): 64 bytes.
const CLFLUSH_LINE_QWORDS: u32 = 8;

/// Topology level types in leaf 0xB/0x1F ECX[15:8].
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// What the host's KVM can do that CPUID must reflect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCaps {
    /// `KVM_CAP_TSC_DEADLINE_TIMER`: the in-kernel LAPIC emulates the
    /// TSC-deadline timer mode, so the guest may use it.
    pub tsc_deadline: bool,
}

/// Bits needed to number `count` cores (the APIC ID shift of the core level).
fn core_shift(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

fn is_amd(entries: &[kvm_cpuid_entry2]) -> bool {
    entries.iter().any(|e| {
        e.function == LEAF_VENDOR
            && (e.ebx, e.edx, e.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163) // "AuthenticAMD"
    })
}

fn max_leaf(entries: &[kvm_cpuid_entry2], base: u32) -> u32 {
    entries
        .iter()
        .find(|e| e.function == base && e.index == 0)
        .map(|e| e.eax)
        .unwrap_or(0)
}

/// Set the max leaf of the range starting at `base` to at least `leaf`.
fn raise_max_leaf(entries: &mut [kvm_cpuid_entry2], base: u32, leaf: u32) {
    if let Some(e) = entries
        .iter_mut()
        .find(|e| e.function == base && e.index == 0)
        && e.eax < leaf
    {
        e.eax = leaf;
    }
}

/// Replace every subleaf of `function` with `subleaves`.
fn set_leaf(entries: &mut Vec<kvm_cpuid_entry2>, function: u32, subleaves: &[kvm_cpuid_entry2]) {
    entries.retain(|e| e.function != function);
    entries.extend_from_slice(subleaves);
}

fn leaf(function: u32, index: u32, flags: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags,
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
        ..Default::default()
    }
}

/// Leaf 0xB / 0x1F for vCPU `apic_id` of `count` one-thread cores: SMT level,
/// core level, and the terminating invalid level.
fn topology_leaf(function: u32, apic_id: u32, count: u32) -> [kvm_cpuid_entry2; 3] {
    let f = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
    [
        leaf(function, 0, f, [0, 1, LEVEL_SMT << 8, apic_id]),
        leaf(
            function,
            1,
            f,
            [core_shift(count), count, (LEVEL_CORE << 8) | 1, apic_id],
        ),
        leaf(function, 2, f, [0, 0, 2, apic_id]),
    ]
}

/// Rewrite `entries` (KVM's supported CPUID) for vCPU `index` of `count`
/// (the *possible* vCPUs: hot-added ones get the same view).
pub fn normalize(entries: &mut Vec<kvm_cpuid_entry2>, index: u32, count: u32, caps: HostCaps) {
    let count = count.max(1);
    let apic_id = index;
    let amd = is_amd(entries);
    // Topology leaves: always present, whatever KVM returned.
    raise_max_leaf(entries, LEAF_VENDOR, LEAF_TOPOLOGY);
    set_leaf(
        entries,
        LEAF_TOPOLOGY,
        &topology_leaf(LEAF_TOPOLOGY, apic_id, count),
    );
    if max_leaf(entries, LEAF_VENDOR) >= LEAF_TOPOLOGY_V2 {
        set_leaf(
            entries,
            LEAF_TOPOLOGY_V2,
            &topology_leaf(LEAF_TOPOLOGY_V2, apic_id, count),
        );
    }
    if amd {
        // Extended APIC ID, core ID (one thread per core) and node 0: what
        // Linux reads when TOPOEXT is set.
        raise_max_leaf(entries, LEAF_EXT_MAX, LEAF_EXT_APIC_ID);
        set_leaf(
            entries,
            LEAF_EXT_APIC_ID,
            &[leaf(LEAF_EXT_APIC_ID, 0, 0, [apic_id, index & 0xff, 0, 0])],
        );
    }
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC ID, [23:16] logical processors per
                // package, [15:8] CLFLUSH line size.
                e.ebx = (e.ebx & 0xff)
                    | (CLFLUSH_LINE_QWORDS << 8)
                    | ((count.min(255)) << 16)
                    | ((apic_id & 0xff) << 24);
                // No perf-capabilities MSR is emulated for the guest.
                e.ecx = (e.ecx & !(ECX_VMX | ECX_PDCM)) | ECX_HYPERVISOR;
                if caps.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                } else {
                    e.ecx &= !ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE => {
                let level = (e.eax >> 5) & 0x7;
                if e.eax & 0x1f != 0 {
                    let sharing = if level >= 3 { count - 1 } else { 0 };
                    e.eax =
                        (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((count - 1) & 0x3f) << 26);
                }
            }
            LEAF_EXT_FEATURES => {
                e.ecx &= !EXT_ECX_SVM;
                if amd {
                    e.ecx |= EXT_ECX_TOPOEXT;
                } else {
                    e.ecx &= !EXT_ECX_TOPOEXT;
                }
            }
            LEAF_EXT_ADDR_SIZES => {
                // AMD: ECX[7:0] = cores - 1, [15:12] = APIC ID size.
                e.ecx = (e.ecx & !0xf0ff) | ((count - 1) & 0xff) | (core_shift(count) << 12);
            }
            _ => {}
        }
    }
}

/// One CPUID entry as `vmctl __kvm-cpuid` prints it (one JSON object a line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DumpEntry {
    pub function: u32,
    pub index: u32,
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

impl From<&kvm_cpuid_entry2> for DumpEntry {
    fn from(e: &kvm_cpuid_entry2) -> Self {
        DumpEntry {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        }
    }
}

impl From<&DumpEntry> for kvm_cpuid_entry2 {
    fn from(e: &DumpEntry) -> Self {
        leaf(e.function, e.index, e.flags, [e.eax, e.ebx, e.ecx, e.edx])
    }
}

/// This host's `KVM_GET_SUPPORTED_CPUID`, for `vmctl __kvm-cpuid` (how the
/// test fixtures are captured).
pub fn supported() -> Result<Vec<DumpEntry>, kvm_ioctls::Error> {
    let kvm = kvm_ioctls::Kvm::new()?;
    let cpuid = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)?;
    Ok(cpuid.as_slice().iter().map(DumpEntry::from).collect())
}

/// The host capabilities [`normalize`] needs.
pub fn host_caps(kvm: &kvm_ioctls::Kvm) -> HostCaps {
    HostCaps {
        tsc_deadline: kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
    }
}

/// `vmctl __kvm-cpuid` output of a real Linux 6.1 KVM (Debian
/// 6.1.0 cloud kernel, kvm-amd, QEMU `-cpu EPYC,+svm` under TCG: the nested
/// lab's L1).
#[cfg(test)]
pub const KVM_61_AMD_FIXTURE: &str = include_str!("testdata/kvm-6.1-amd-epyc.jsonl");

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Vec<kvm_cpuid_entry2> {
        KVM_61_AMD_FIXTURE
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let d: DumpEntry = serde_json::from_str(l).unwrap();
                kvm_cpuid_entry2::from(&d)
            })
            .collect()
    }

    fn get(e: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<kvm_cpuid_entry2> {
        e.iter()
            .find(|x| x.function == function && x.index == index)
            .copied()
    }

    #[test]
    fn the_fixture_is_what_61_returns_no_topology() {
        // The premise of this module: 6.1 gives subleaf 0 of 0xB zeroed and
        // no subleaf 1; 0x8000_001E zeroed.
        let e = fixture();
        assert!(is_amd(&e));
        let b0 = get(&e, LEAF_TOPOLOGY, 0).unwrap();
        assert_eq!((b0.eax, b0.ebx, b0.ecx), (0, 0, 0));
        assert!(get(&e, LEAF_TOPOLOGY, 1).is_none());
        if let Some(x) = get(&e, LEAF_EXT_APIC_ID, 0) {
            assert_eq!((x.eax, x.ebx, x.ecx), (0, 0, 0));
        }
    }

    #[test]
    fn each_vcpu_of_four_sees_its_apic_id_and_four_one_thread_cores() {
        for index in 0..4 {
            let mut e = fixture();
            normalize(&mut e, index, 4, HostCaps { tsc_deadline: true });
            let l1 = get(&e, LEAF_FEATURES, 0).unwrap();
            assert_eq!(l1.ebx >> 24, index, "initial APIC id");
            assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical processors");
            assert_eq!((l1.ebx >> 8) & 0xff, 8, "CLFLUSH 64 bytes");
            assert_eq!(l1.ecx & (ECX_VMX | ECX_PDCM), 0);
            assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
            assert_ne!(l1.ecx & ECX_TSC_DEADLINE, 0);
            assert_ne!(l1.edx & EDX_HTT, 0);
            // Leaf 0xB: SMT level 1 thread, core level 4 cores, then end.
            let smt = get(&e, LEAF_TOPOLOGY, 0).unwrap();
            let core = get(&e, LEAF_TOPOLOGY, 1).unwrap();
            let end = get(&e, LEAF_TOPOLOGY, 2).unwrap();
            assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, index));
            assert_eq!(
                (core.eax, core.ebx, core.ecx, core.edx),
                (2, 4, 0x201, index)
            );
            assert_eq!((end.ebx, (end.ecx >> 8) & 0xff, end.edx), (0, 0, index));
            assert_eq!(e.iter().filter(|x| x.function == LEAF_TOPOLOGY).count(), 3);
            assert!(get(&e, LEAF_VENDOR, 0).unwrap().eax >= LEAF_TOPOLOGY);
            // AMD: TOPOEXT and 0x8000_001E agree: own APIC id, own core, one
            // thread per core.
            let ext = get(&e, LEAF_EXT_FEATURES, 0).unwrap();
            assert_ne!(ext.ecx & EXT_ECX_TOPOEXT, 0);
            assert_eq!(ext.ecx & EXT_ECX_SVM, 0);
            let x = get(&e, LEAF_EXT_APIC_ID, 0).unwrap();
            assert_eq!(
                (x.eax, x.ebx & 0xff, (x.ebx >> 8) & 0xff),
                (index, index, 0)
            );
            assert!(get(&e, LEAF_EXT_MAX, 0).unwrap().eax >= LEAF_EXT_APIC_ID);
            let sizes = get(&e, LEAF_EXT_ADDR_SIZES, 0).unwrap();
            assert_eq!((sizes.ecx & 0xff, (sizes.ecx >> 12) & 0xf), (3, 2));
        }
    }

    #[test]
    fn single_vcpu_has_no_htt_and_no_tsc_deadline_without_the_cap() {
        let mut e = fixture();
        normalize(&mut e, 0, 1, HostCaps::default());
        let l1 = get(&e, LEAF_FEATURES, 0).unwrap();
        assert_eq!(l1.edx & EDX_HTT, 0);
        assert_eq!(l1.ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(l1.ebx >> 24, 0);
        let core = get(&e, LEAF_TOPOLOGY, 1).unwrap();
        assert_eq!((core.eax, core.ebx), (0, 1));
    }

    #[test]
    fn normalizing_twice_gives_the_same_table() {
        let mut once = fixture();
        normalize(&mut once, 1, 2, HostCaps::default());
        let mut twice = once.clone();
        normalize(&mut twice, 1, 2, HostCaps::default());
        let a: Vec<DumpEntry> = once.iter().map(DumpEntry::from).collect();
        let b: Vec<DumpEntry> = twice.iter().map(DumpEntry::from).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn intel_gets_leaf_b_and_no_topoext() {
        let mut e = vec![
            leaf(0, 0, 0, [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]), // GenuineIntel
            leaf(1, 0, 0, [0x806f8, 0, ECX_VMX, 0]),
            leaf(LEAF_EXT_MAX, 0, 0, [0x8000_0008, 0, 0, 0]),
            leaf(LEAF_EXT_FEATURES, 0, 0, [0, 0, EXT_ECX_TOPOEXT, 0]),
        ];
        normalize(&mut e, 1, 2, HostCaps::default());
        assert_eq!(get(&e, LEAF_TOPOLOGY, 1).unwrap().ebx, 2);
        assert!(get(&e, LEAF_EXT_APIC_ID, 0).is_none());
        assert_eq!(
            get(&e, LEAF_EXT_FEATURES, 0).unwrap().ecx & EXT_ECX_TOPOEXT,
            0
        );
    }

    #[test]
    fn core_shift_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(core_shift), [0, 1, 2, 2, 3, 3, 4]);
    }
}
