//! `--qemu-trace`: L1's QEMU runs with `-d int,cpu_reset` and writes its log
//! into a FIFO that this module reads. Under TCG with emulated SVM, QEMU
//! executes the L2 guests' code itself, so every exception an L2 guest takes
//! (unless L1's KVM intercepts it) is in that log with the vector, error
//! code, RIP, CR2 and a register dump — including the ones that end in a
//! triple fault, which L1's KVM only sees as an SVM `SHUTDOWN` exit with the
//! registers already reset.
//!
//! The full log is huge (L1's own interrupts and page faults too), so only
//! a ring of the last records is kept; when a record shows a triple fault
//! (`check_exception old: 0x8 ...`: an exception while delivering #DF; in
//! guest mode QEMU turns it into the SHUTDOWN exit, in L1 it logs
//! `Triple fault` and resets), the ring and the records after it go to the
//! kept log, and a one-line-per-record summary of the chain is returned.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};

/// Records kept before a trigger.
pub const RING_RECORDS: usize = 3000;
/// Records written after a trigger.
pub const AFTER_RECORDS: usize = 200;
/// Triggers written in full to the kept log (later ones only counted).
pub const MAX_TRIGGERS: usize = 8;
/// Lines of the summary chain per trigger.
pub const CHAIN_RECORDS: usize = 14;

/// One record of QEMU's `-d int` log: a header line and its register dump.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub lines: Vec<String>,
}

impl Record {
    pub fn header(&self) -> &str {
        self.lines.first().map(String::as_str).unwrap_or("")
    }

    /// A register dump value (`CR3=...`, `EFER=...`) from the dump lines.
    pub fn reg(&self, name: &str) -> Option<&str> {
        let key = format!("{name}=");
        self.lines.iter().skip(1).find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(key.as_str()))
        })
    }

    /// The compact form used in summaries: the header plus CR3.
    pub fn one_line(&self) -> String {
        let h = self.header().trim();
        match self.reg("CR3") {
            Some(cr3) => format!("{h} CR3={cr3}"),
            None => h.to_string(),
        }
    }

    /// `check_exception old: 0x8 new 0x..`: the CPU faulted while delivering
    /// a double fault — a triple fault.
    pub fn is_triple_fault(&self) -> bool {
        let h = self.header().trim();
        h.starts_with("Triple fault")
            || h.strip_prefix("check_exception old: 0x8 ").is_some()
            || h.strip_prefix("check_exception old: 0x8\t").is_some()
    }

    /// A delivered double fault (`v=08`): in L1 this is how a kernel stack
    /// overflow ends (a #PF while delivering a #PF at the guard page), the
    /// end of the exception storm in docs/nested-lab.md "L1's own kernel
    /// panics"; the records before it show where the storm began.
    pub fn is_double_fault(&self) -> bool {
        self.vector() == Some(8)
    }

    /// A delivered interrupt/exception (`   12: v=0e e=0002 i=0 ...`).
    pub fn vector(&self) -> Option<u8> {
        let h = self.header().trim_start();
        let (count, rest) = h.split_once(": v=")?;
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        u8::from_str_radix(rest.get(..2)?, 16).ok()
    }
}

/// Does `line` start a new record (anything that is not register-dump text)?
pub fn starts_record(line: &str) -> bool {
    let t = line.trim_start();
    if t.starts_with("check_exception")
        || t.starts_with("Triple fault")
        || t.starts_with("CPU Reset")
    {
        return true;
    }
    match t.split_once(": v=") {
        Some((count, _)) => !count.is_empty() && count.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

/// What the filter saw.
#[derive(Debug, Default)]
pub struct TraceSummary {
    pub records: u64,
    pub bytes: u64,
    /// Per trigger: the chain of records leading to it (compact lines).
    pub triple_faults: Vec<Vec<String>>,
    /// The same for every delivered double fault (L1's stack overflows).
    pub double_faults: Vec<Vec<String>>,
    /// Records written at the end of the kept log (the last ones QEMU
    /// logged, for a stall or a timeout).
    pub tail_kept: usize,
    /// Delivered vectors (v=..) counted over the whole log (256 entries).
    pub vector_counts: Vec<u64>,
}

/// The streaming filter.
pub struct Filter<W: Write> {
    ring: VecDeque<Record>,
    current: Option<Record>,
    after_left: usize,
    /// Ring records (at its tail) not yet written to `out`.
    unwritten: usize,
    out: W,
    pub summary: TraceSummary,
}

impl<W: Write> Filter<W> {
    pub fn new(out: W) -> Self {
        Filter {
            ring: VecDeque::with_capacity(RING_RECORDS + 1),
            current: None,
            after_left: 0,
            unwritten: 0,
            out,
            summary: TraceSummary {
                vector_counts: vec![0; 256],
                ..TraceSummary::default()
            },
        }
    }

    pub fn line(&mut self, line: &str) {
        self.summary.bytes += line.len() as u64 + 1;
        if starts_record(line) || self.current.is_none() {
            if let Some(r) = self.current.take() {
                self.finish(r);
            }
            self.current = Some(Record {
                lines: vec![line.to_string()],
            });
        } else if let Some(r) = self.current.as_mut() {
            r.lines.push(line.to_string());
        }
    }

    fn finish(&mut self, r: Record) {
        self.summary.records += 1;
        if let Some(v) = r.vector() {
            self.summary.vector_counts[usize::from(v)] += 1;
        }
        let kind = if r.is_triple_fault() {
            Some(("triple fault", true))
        } else if r.is_double_fault() {
            Some(("double fault", false))
        } else {
            None
        };
        if let Some((kind, triple)) = kind {
            let n = self.summary.triple_faults.len() + self.summary.double_faults.len();
            let chain: Vec<String> = self
                .ring
                .iter()
                .rev()
                .take(CHAIN_RECORDS)
                .rev()
                .chain(std::iter::once(&r))
                .map(Record::one_line)
                .collect();
            if triple {
                self.summary.triple_faults.push(chain);
            } else {
                self.summary.double_faults.push(chain);
            }
            if n < MAX_TRIGGERS {
                let records = self.summary.records;
                self.write_unwritten(|fresh| {
                    format!(
                        "===== {kind} #{} (record {records}): the {fresh} records before it =====",
                        n + 1
                    )
                });
                let _ = writeln!(self.out, "===== the {kind} =====");
                for l in &r.lines {
                    let _ = writeln!(self.out, "{l}");
                }
                let _ = writeln!(self.out, "===== after it =====");
                self.after_left = AFTER_RECORDS;
                self.keep(r);
                return;
            }
        }
        if self.after_left > 0 {
            self.after_left -= 1;
            for l in &r.lines {
                let _ = writeln!(self.out, "{l}");
            }
            if self.after_left == 0 {
                let _ = writeln!(self.out, "===== end =====");
            }
        } else {
            self.unwritten += 1;
        }
        self.keep(r);
    }

    /// Write the ring's records not yet written (a trigger soon after
    /// another continues its "after" part), under `header(count)`; the count.
    fn write_unwritten(&mut self, header: impl FnOnce(usize) -> String) -> usize {
        let fresh = self.unwritten.min(self.ring.len());
        let _ = writeln!(self.out, "{}", header(fresh));
        for old in self.ring.iter().skip(self.ring.len() - fresh) {
            for l in &old.lines {
                let _ = writeln!(self.out, "{l}");
            }
        }
        self.unwritten = 0;
        fresh
    }

    /// Every record ends in the ring, so a later trigger's chain sees it.
    fn keep(&mut self, r: Record) {
        self.ring.push_back(r);
        if self.ring.len() > RING_RECORDS {
            self.ring.pop_front();
        }
    }

    /// Flush the last record; the summary.
    pub fn finish_all(mut self) -> TraceSummary {
        if let Some(r) = self.current.take() {
            self.finish(r);
        }
        // The end of the log is kept too: when L1 stalls or times out and
        // QEMU is killed, what the CPUs did last is the only evidence.
        let records = self.summary.records;
        self.summary.tail_kept = if self.unwritten.min(self.ring.len()) > 0 {
            self.write_unwritten(|fresh| {
                format!("===== end of the log: the last {fresh} records (of {records}) =====")
            })
        } else {
            0
        };
        let _ = self.out.flush();
        self.summary
    }
}

/// Read QEMU's log from `input` until EOF through a [`Filter`] writing to `out`.
pub fn filter_stream<R: Read, W: Write>(input: R, out: W) -> TraceSummary {
    let mut f = Filter::new(out);
    let mut r = BufReader::with_capacity(1 << 20, input);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let s = String::from_utf8_lossy(&buf);
                f.line(s.trim_end_matches(['\n', '\r']));
            }
        }
    }
    f.finish_all()
}

/// A short human report of a summary.
pub fn report(s: &TraceSummary) -> String {
    let mut out = format!(
        "qemu-trace: {} records ({} MiB) read, {} triple fault(s), {} double fault(s)\n",
        s.records,
        s.bytes >> 20,
        s.triple_faults.len(),
        s.double_faults.len()
    );
    let kinds = [
        ("triple fault", &s.triple_faults),
        ("double fault", &s.double_faults),
    ];
    for (kind, chains) in kinds {
        for (i, chain) in chains.iter().enumerate() {
            out.push_str(&format!("  {kind} #{}, the records before it:\n", i + 1));
            for l in chain {
                out.push_str(&format!("    {l}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "RAX=0000000000000000 RBX=0000000000000001\n\
        CR0=80050033 CR2=ffffffffff5fd000 CR3=000000000a60e000 CR4=000006f0\n\
        EFER=0000000000001d01";

    fn rec(header: &str) -> String {
        format!("{header}\n{DUMP}\n")
    }

    #[test]
    fn record_boundaries_and_fields() {
        assert!(starts_record(
            "    42: v=0e e=0002 i=0 cpl=0 IP=0010:ffffffff81001234 pc=ffffffff81001234 SP=0018:ffffc90000003e88 CR2=0000000000000008"
        ));
        assert!(starts_record("check_exception old: 0xffffffff new 0xe"));
        assert!(starts_record("Triple fault"));
        assert!(!starts_record("RAX=0000000000000000 RBX=0000000000000001"));
        assert!(!starts_record(
            "ES =0000 0000000000000000 ffffffff 00c00000"
        ));
        let r = Record {
            lines: format!("   7: v=08 e=0000 i=0 cpl=0 IP=0010:ffffffff81000000\n{DUMP}")
                .lines()
                .map(String::from)
                .collect(),
        };
        assert_eq!(r.vector(), Some(8));
        assert_eq!(r.reg("CR3"), Some("000000000a60e000"));
        assert!(r.one_line().ends_with("CR3=000000000a60e000"));
        assert!(!r.is_triple_fault());
    }

    #[test]
    fn triple_fault_keeps_context_and_chain() {
        let mut log = String::new();
        for i in 0..10 {
            log.push_str(&rec(&format!(
                "{i:6}: v=ef e=0000 i=0 cpl=3 IP=0033:0000000000401000"
            )));
        }
        log.push_str("check_exception old: 0xffffffff new 0xe\n");
        log.push_str(&rec("    10: v=0e e=0000 i=0 cpl=0 IP=0010:ffffffff81001234 pc=ffffffff81001234 SP=0018:0000000000000000 CR2=0000000000000008"));
        log.push_str("check_exception old: 0xe new 0xe\n");
        log.push_str(&rec(
            "    11: v=08 e=0000 i=0 cpl=0 IP=0010:ffffffff81001234",
        ));
        log.push_str("check_exception old: 0x8 new 0xe\n");
        log.push_str(&rec(
            "    12: v=20 e=0000 i=0 cpl=0 IP=0010:ffffffff81009999",
        ));
        let mut out = Vec::new();
        let s = filter_stream(log.as_bytes(), &mut out);
        assert_eq!(s.triple_faults.len(), 1);
        assert_eq!(
            s.double_faults.len(),
            1,
            "the #DF before it is a trigger too"
        );
        let chain = &s.triple_faults[0];
        assert_eq!(chain.last().unwrap(), "check_exception old: 0x8 new 0xe");
        assert!(chain.iter().any(|l| l.contains("v=08")));
        assert!(chain.iter().any(|l| l.contains("CR2=0000000000000008")));
        assert_eq!(s.vector_counts[0xef], 10);
        assert_eq!(s.vector_counts[0x0e], 1);
        let kept = String::from_utf8(out).unwrap();
        assert!(kept.contains("===== double fault #1"));
        assert!(kept.contains("===== triple fault #2"));
        assert!(
            kept.contains("v=20"),
            "the record after the trigger is kept"
        );
        assert!(report(&s).contains("1 triple fault(s), 1 double fault(s)"));
    }

    #[test]
    fn without_a_trigger_only_the_tail_is_kept() {
        let log = rec("     1: v=ec e=0000 i=0 cpl=0 IP=0010:ffffffff81000000");
        let mut out = Vec::new();
        let s = filter_stream(log.as_bytes(), &mut out);
        let kept = String::from_utf8(out).unwrap_or_default();
        assert!(
            kept.starts_with("===== end of the log: the last 1 records (of 1) =====\n     1: v=ec"),
            "{kept}"
        );
        assert_eq!((s.records, s.tail_kept), (1, 1));
        assert!(s.triple_faults.is_empty());
    }
}
