# Sourced by l1-init.sh (busybox sh) when scenario.env names BACKUP_VM:
# the nested lab's live-backup check (docs/nested-lab.md, "The live-backup
# check"; written by xtask/src/nested/backup_check.rs). Backs up the running
# debian-12 VM, then checks the copy of its root filesystem: its agent froze
# it around the pause, so the copy must be clean — no journal replay pending
# (`needs_recovery` is set on disk while an ext4 is mounted and cleared by a
# freeze) and `e2fsck -fn` finds nothing to fix.
backup_check() {
    vm=$1
    out=/lab/backup-check
    rm -rf "$out"
    pid=$(cat "/lab/.vmctl/vms/$vm/vmm.pid" 2>/dev/null)
    say "@@STEP-BEGIN backup-live: vmctl backup $vm -o $out --json"
    # L2 runs under TCG: the agent answers in seconds, not milliseconds.
    VMCTL_AGENT_WAIT_MS=60000 vmctl backup "$vm" -o "$out" --json > /tmp/backup.json 2> /tmp/backup.err
    rc=$?
    sed 's/^/  | /' /tmp/backup.json | tail -n 40
    sed 's/^/  | /' /tmp/backup.err | tail -n 20
    say "@@NESTED step=backup-live rc=$rc want=0 vm=$vm"
    [ "$rc" = 0 ] || { FAILED=1; return 1; }
    same_pid "$vm" "$pid" backup-same-pid
    flat=$(tr -d '\n' < /tmp/backup.json | tr -s ' ')
    level=$(echo "$flat" | sed -n 's/.*"consistency": *"\([a-z-]*\)".*/\1/p')
    frozen=$(echo "$flat" | sed -n 's/.*"frozen": *\(\[[^]]*\]\).*/\1/p' | tr -d ' ')
    paused=$(echo "$flat" | sed -n 's/.*"paused_us": *\([0-9]*\).*/\1/p')
    note=$(echo "$flat" | sed -n 's/.*"consistency_note": *"\([^"]*\)".*/\1/p')
    if [ "$level" = filesystem-consistent ] && echo "$frozen" | grep -q '"/"'; then rc=0; else rc=1; FAILED=1; fi
    say "@@NESTED step=backup-filesystem-consistent rc=$rc want=0 level=$level frozen=$frozen paused_us=$paused note=$note"
    # What the agent answered (it echoes every reply on the console).
    grep "vmctl-agent: reply\|vmctl-agent: no thaw" "/lab/.vmctl/vms/$vm/console.log" | tail -n 6 \
        | sed "s|^|@@LOG $vm console.log: |"
    img=$out/root.raw
    features=$(debugfs -R stats "$img" 2>/dev/null | grep -i '^Filesystem features:')
    say "  | $features"
    if [ -n "$features" ] && ! echo "$features" | grep -q needs_recovery; then rc=0; else rc=1; FAILED=1; fi
    say "@@NESTED step=backup-no-journal-replay rc=$rc want=0"
    e2fsck -fn "$img" > /tmp/fsck.out 2>&1
    rc=$?
    sed 's/^/  | /' /tmp/fsck.out | tail -n 20
    [ "$rc" = 0 ] || FAILED=1
    say "@@NESTED step=backup-fsck-clean rc=$rc want=0"
    # Who thawed: vmctl's thaw, or the agent's 20 s watchdog (after a pause
    # longer than that the guest's clock jumps and the watchdog may be
    # first; the level is the same). Informational.
    sleep 22
    if grep -q "no thaw within" "/lab/.vmctl/vms/$vm/console.log"; then by=watchdog; else by=vmctl; fi
    say "@@BACKUP vm=$vm thawed_by=$by paused_us=$paused"
    rm -rf "$out"
}
