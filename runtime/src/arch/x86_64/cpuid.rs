//! CPUID each vCPU sees: KVM's supported set, normalized per vCPU so the guest
//! finds its own APIC ID, a topology of `count` single-thread cores in one
//! socket, the hypervisor bit, and no nested virtualization (VMX/SVM cleared).

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_EXT_ADDR_SIZES: u32 = 0x8000_0008;

const ECX_VMX: u32 = 1 << 5;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const EXT_ECX_SVM: u32 = 1 << 2;

/// Topology level types in leaf 0xB/0x1F ECX[15:8].
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `count` cores (the APIC ID shift of the core level).
fn core_shift(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Rewrite `entries` (KVM's supported CPUID) for vCPU `index` of `count`.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], index: u32, count: u32) {
    let count = count.max(1);
    let apic_id = index;
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC ID, [23:16] logical processors per package.
                e.ebx = (e.ebx & 0x0000_ffff) | ((apic_id & 0xff) << 24) | ((count.min(255)) << 16);
                e.ecx = (e.ecx & !ECX_VMX) | ECX_HYPERVISOR;
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
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_shift(count);
                        e.ebx = count;
                        e.ecx = (LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_EXT_FEATURES => e.ecx &= !EXT_ECX_SVM,
            LEAF_EXT_ADDR_SIZES => {
                // AMD: ECX[7:0] = cores - 1, [15:12] = APIC ID size.
                e.ecx = (e.ecx & !0xf0ff) | ((count - 1) & 0xff) | (core_shift(count) << 12);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn sample() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(1, 0, 0x806f8, 0x0001_0800 | (7 << 24), ECX_VMX | 0x1, 0),
            entry(4, 0, 0x121, 0, 0, 0),
            entry(4, 1, 0x122, 0, 0, 0),
            entry(4, 2, 0x143, 0, 0, 0),
            entry(4, 3, 0x163, 0, 0, 0),
            entry(4, 4, 0, 0, 0, 0),
            entry(0xb, 0, 9, 9, 9, 9),
            entry(0xb, 1, 9, 9, 9, 9),
            entry(0xb, 2, 9, 9, 9, 9),
            entry(0x8000_0001, 0, 0, 0, EXT_ECX_SVM | 1, 0),
            entry(0x8000_0008, 0, 0x3030, 0, 0x7007, 0),
        ]
    }

    #[test]
    fn each_vcpu_sees_its_apic_id_and_the_topology() {
        let mut e = sample();
        normalize(&mut e, 2, 4);
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0x0800);
        assert_eq!(e[0].ecx & ECX_VMX, 0);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        // leaf 4: 4 cores per package; L1/L2 private, L3 shared by all.
        assert_eq!(e[1].eax >> 26, 3);
        assert_eq!((e[1].eax >> 14) & 0xfff, 0);
        assert_eq!((e[4].eax >> 14) & 0xfff, 3);
        assert_eq!(e[5].eax, 0);
        // leaf 0xB
        assert_eq!((e[6].eax, e[6].ebx, e[6].ecx, e[6].edx), (0, 1, 0x100, 2));
        assert_eq!((e[7].eax, e[7].ebx, e[7].ecx, e[7].edx), (2, 4, 0x201, 2));
        assert_eq!((e[8].eax, e[8].ebx, e[8].ecx, e[8].edx), (0, 0, 2, 2));
        assert_eq!(e[9].ecx, 1);
        assert_eq!(e[10].ecx & 0xff, 3);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut e = sample();
        e[0].edx = EDX_HTT;
        normalize(&mut e, 0, 1);
        assert_eq!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[0].ebx >> 24, 0);
        assert_eq!(e[7].eax, 0);
        assert_eq!(e[7].ebx, 1);
    }

    #[test]
    fn core_shift_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(core_shift), [0, 1, 2, 2, 3, 3, 4]);
    }
}
