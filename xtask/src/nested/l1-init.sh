#!/bin/sh
# PID 1 of the nested lab's L1 guest (QEMU TCG with emulated AMD-V).
#
# Loads kvm.ko + kvm-amd.ko for a real /dev/kvm, then runs the scenario with
# vmctl against /lab/vmctl.kdl and prints machine-readable markers on the
# serial console for `cargo xtask nested-lab` to check:
#   @@NESTED step=<name> rc=<rc> want=<rc>     one per step
#   @@GUEST phase=<n> vm=<name> <agent json>   the guest's own latest report
#   @@STATUS phase=<n> <status --json, one line>
#   @@LOG <vm> <file>: <line>                   log tails when something fails
#   @@NESTED done                               the scenario ran to its end
# Scenario parameters come from /lab/scenario.env (written by the harness).

PATH=/sbin:/bin:/usr/sbin:/usr/bin
# `vmctl ssh` finds the lab's key in root's ~/.ssh.
HOME=/root
export PATH HOME
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /run /tmp /var/run /sys/fs/cgroup
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mount -t tmpfs tmpfs /tmp
ip link set lo up 2>/dev/null

# The lab (KDL files, lock, image cache, room for the VMs' disks) is a
# virtio disk: load its drivers and mount it as /lab.
for m in $(cat /etc/l1/disk-modules); do
    insmod "/lib/modules/$m" || echo "insmod $m failed"
done
mkdir -p /lab
t=0
while [ ! -b /dev/vda ] && [ "$t" -lt 100 ]; do sleep 0.1; t=$((t + 1)); done
mount -t ext4 /dev/vda /lab || echo "@@NESTED step=lab-disk rc=1 want=0"

. /etc/l1/scenario.env
cd /lab
# A heartbeat for the harness: L1 silent for minutes means its kernel no
# longer runs (an emulator stall, docs/nested-lab.md), not a slow step.
( while true; do echo "~~HB $(cut -d' ' -f1 /proc/uptime)"; sleep 10; done ) &
if [ -n "$L1_THP" ]; then
    echo "$L1_THP" > /sys/kernel/mm/transparent_hugepage/enabled
    echo "$L1_THP" > /sys/kernel/mm/transparent_hugepage/defrag 2>/dev/null
fi
say() { echo "$*"; }
say "@@L1 thp=$(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)"
export VMCTL_LOG=${VMCTL_LOG:-info}
FAILED=0

# step NAME WANT_RC CMD...: run, print the marker, remember failures.
step() {
    name=$1; want=$2; shift 2
    say "@@STEP-BEGIN $name: $*"
    "$@" > /tmp/step.out 2>&1
    rc=$?
    sed 's/^/  | /' /tmp/step.out | tail -n 60
    say "@@NESTED step=$name rc=$rc want=$want"
    [ "$rc" = "$want" ] || FAILED=1
    return $rc
}

# The agent's report shares the console with the kernel: a kernel message
# can land inside a report line and cut it (seen in CI: db's phase-4 line
# ended at `"files":{}` and the check read a truncated report as none). So
# only a report whose braces balance counts; a cut one is skipped and the
# last whole one is used.
last_agent_line() {
    awk '{
        i = index($0, "{\"agent\":\"debian-12\"")
        if (i == 0) next
        s = substr($0, i)
        sub(/[^}]*$/, "", s)
        t = s
        o = gsub(/\{/, "", t)
        t = s
        c = gsub(/\}/, "", t)
        if (o == c && o > 0) last = s
    } END { if (last != "") print last }' "/lab/.vmctl/vms/$1/console.log" 2>/dev/null
}

# wait_agents PHASE: until every VM's guest has reported and, for a
# debian-12 guest, systemd has finished booting (its report no longer says
# "starting": the phase's checks then judge running vs degraded, not how
# far the boot got) — or timeout.
wait_agents() {
    t=0
    while [ "$t" -lt "$GUEST_TIMEOUT" ]; do
        missing=""
        for vm in $VMS; do
            line=$(last_agent_line "$vm")
            case "$line" in
                "" | *'"systemd":"starting"'* | *'"systemd":"initializing"'*) missing="$missing $vm" ;;
            esac
        done
        [ -z "$missing" ] && { say "@@NESTED step=guests-$1 rc=0 want=0 secs=$t"; return 0; }
        sleep 2; t=$((t + 2))
    done
    say "@@NESTED step=guests-$1 rc=1 want=0 missing=$missing"
    FAILED=1
    dump_logs
    return 1
}

# wait_memory VM MIN MAX: until the VM's guest reports memory_mib in [MIN, MAX].
# wait_memory VM MIN MAX [STEP]: until the VM's guest reports memory_mib in
# [MIN, MAX]; reported as STEP (default memory-changed).
wait_memory() {
    t=0
    name=${4:-memory-changed}
    while [ "$t" -lt "$GUEST_TIMEOUT" ]; do
        mib=$(last_agent_line "$1" | sed -n 's/.*"memory_mib":\([0-9]*\).*/\1/p')
        if [ -n "$mib" ] && [ "$mib" -ge "$2" ] && [ "$mib" -le "$3" ]; then
            say "@@NESTED step=$name rc=0 want=0 secs=$t memory_mib=$mib"
            return 0
        fi
        sleep 2; t=$((t + 2))
    done
    say "@@NESTED step=$name rc=1 want=0 memory_mib=$mib"
    FAILED=1
    dump_logs
    return 1
}

# wait_cpus VM N STEP: until the VM's guest reports N CPUs online (nproc).
wait_cpus() {
    t=0
    while [ "$t" -lt "$GUEST_TIMEOUT" ]; do
        n=$(last_agent_line "$1" | sed -n 's/.*"cpus":\([0-9]*\).*/\1/p')
        if [ "$n" = "$2" ]; then
            say "@@NESTED step=$3 rc=0 want=0 secs=$t cpus=$n"
            return 0
        fi
        sleep 2; t=$((t + 2))
    done
    say "@@NESTED step=$3 rc=1 want=0 cpus=$n"
    FAILED=1
    dump_logs
    return 1
}

# same_pid VM PID STEP: the VM's VMM is still process PID (nothing restarted).
same_pid() {
    now=$(cat "/lab/.vmctl/vms/$1/vmm.pid" 2>/dev/null)
    if [ "$now" = "$2" ]; then rc=0; else rc=1; FAILED=1; fi
    say "@@NESTED step=$3 rc=$rc want=0 before=$2 after=$now"
}

# wait_disks VM JSON: until the VM's guest reports exactly these disks.
wait_disks() {
    t=0
    while [ "$t" -lt "$GUEST_TIMEOUT" ]; do
        if last_agent_line "$1" | grep -qF "\"disks\":$2"; then
            say "@@NESTED step=disk-grown rc=0 want=0 secs=$t"
            return 0
        fi
        sleep 2; t=$((t + 2))
    done
    say "@@NESTED step=disk-grown rc=1 want=0 last=$(last_agent_line "$1")"
    FAILED=1
    dump_logs
    return 1
}

# wait_root_fs VM MIN_BYTES: until the VM's guest reports df / >= MIN_BYTES.
wait_root_fs() {
    t=0
    while [ "$t" -lt "$GUEST_TIMEOUT" ]; do
        b=$(last_agent_line "$1" | sed -n 's/.*"root_fs_bytes":\([0-9]*\).*/\1/p')
        if [ -n "$b" ] && [ "$b" -ge "$2" ]; then
            say "@@NESTED step=root-fs-grown rc=0 want=0 secs=$t root_fs_bytes=$b"
            return 0
        fi
        sleep 2; t=$((t + 2))
    done
    say "@@NESTED step=root-fs-grown rc=1 want=0 root_fs_bytes=$b"
    FAILED=1
    dump_logs
    return 1
}

# wait_nic VM IP STEP: until the VM's guest reports IP on one of its NICs
# (systemd-networkd configured it from what vmctl declared).
wait_nic() {
    t=0
    while [ "$t" -lt "$GUEST_TIMEOUT" ]; do
        if last_agent_line "$1" | grep -q "\"$2/"; then
            say "@@NESTED step=$3 rc=0 want=0 secs=$t vm=$1 ip=$2"
            return 0
        fi
        sleep 2; t=$((t + 2))
    done
    say "@@NESTED step=$3 rc=1 want=0 vm=$1 ip=$2 last=$(last_agent_line "$1")"
    FAILED=1
    dump_logs
    return 1
}

# expect_out STEP WANT CMD...: CMD must exit 0 and print exactly WANT.
expect_out() {
    name=$1; want=$2; shift 2
    say "@@STEP-BEGIN $name: $*"
    out=$("$@" 2>/tmp/expect.err)
    rc=$?
    sed 's/^/  | /' /tmp/expect.err | tail -n 20
    if [ "$rc" = 0 ] && [ "$out" = "$want" ]; then r=0; else r=1; FAILED=1; fi
    say "@@NESTED step=$name rc=$r want=0 exit=$rc out=$(printf '%s' "$out" | head -c 200 | tr '\n' ' ')"
}

# The interfaces L1 has (names only), to show destroy removed the lab's
# bridge and TAPs.
links() { ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort; }

# The network phase: two debian-12 VMs on the lab network. Each guest
# reports the address vmctl declared for it; `vmctl ssh` (host key pinned
# from the guest's own report) reaches both from L1, the bridge's side; a
# byte stream goes from the client VM to a TCP listener on the other.
net_phase() {
    say "@@NET links after apply: $(links | tr '\n' ' ')"
    wait_nic "$NET_LISTENER" "$NET_LISTENER_IP" nic-listener || return
    wait_nic "$NET_CLIENT" "$NET_CLIENT_IP" nic-client || return
    expect_out ssh-listener-hostname "$NET_LISTENER_HOST" vmctl ssh "$NET_LISTENER" -- hostname
    expect_out ssh-client-hostname "$NET_CLIENT_HOST" vmctl ssh "$NET_CLIENT" -- hostname
    expect_out ssh-system-running running vmctl ssh "$NET_CLIENT" -- systemctl is-system-running --wait
    step tcp-listen-start 0 vmctl ssh "$NET_LISTENER" -- \
        "setsid -f sh -c 'nc -l 7000 > /tmp/vmctl-tcp' < /dev/null > /dev/null 2>&1"
    step tcp-listening 0 vmctl ssh "$NET_LISTENER" -- \
        "for i in \$(seq 100); do ss -Hltn 'sport = :7000' | grep -q . && exit 0; sleep 0.1; done; exit 1"
    step tcp-send 0 vmctl ssh "$NET_CLIENT" -- \
        "echo bytes-from-\$(hostname) | nc -N -w 10 $NET_LISTENER_IP 7000"
    # nc -l exits once the sender closed; then the file is complete.
    expect_out tcp-received "bytes-from-$NET_CLIENT_HOST" vmctl ssh "$NET_LISTENER" -- \
        "for i in \$(seq 50); do pgrep -x nc > /dev/null || break; sleep 0.1; done; cat /tmp/vmctl-tcp"
}

report() {
    for vm in $VMS; do
        say "@@GUEST phase=$1 vm=$vm $(last_agent_line "$vm")"
    done
    vmctl status --json > /tmp/status.json 2>/tmp/status.err
    say "@@STATUS phase=$1 $(tr -d '\n' < /tmp/status.json)"
    sed 's/^/  status stderr | /' /tmp/status.err | tail -n 20
}

dump_logs() {
    for vm in $VMS; do
        for f in console.log vmm.log vmm.exit; do
            tail -n "${LOG_LINES:-40}" "/lab/.vmctl/vms/$vm/$f" 2>/dev/null | sed "s|^|@@LOG $vm $f: |"
        done
    done
}

say "@@NESTED step=l1-boot rc=0 want=0 kernel=$(uname -r) cpus=$(nproc)"
for m in $(cat /etc/l1/modules); do
    grep -qx "$m" /etc/l1/disk-modules && continue
    args=""
    [ "$m" = kvm-amd.ko ] && args=$KVM_AMD_ARGS
    # shellcheck disable=SC2086
    insmod "/lib/modules/$m" $args || say "insmod $m $args failed"
done
if [ -c /dev/kvm ]; then rc=0; else rc=1; FAILED=1; fi
say "@@NESTED step=kvm rc=$rc want=0 svm=$(grep -c -w svm /proc/cpuinfo) npt=$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null)"

# The scenario proper; returns early when a step leaves nothing to check.
scenario() {
    step validate 0 vmctl validate || return
    step image-cached 0 vmctl image list
    links > /tmp/links-before
    step apply 0 vmctl apply --auto-approve || return
    wait_agents 1
    report 1
    # Issue 14: a live backup of a debian-12 VM is filesystem-consistent.
    [ -n "${BACKUP_VM:-}" ] && . /etc/l1/backup-check.sh && backup_check "$BACKUP_VM"
    # debian-12 guests: systemd's serial getty on ttyS0 gives `vmctl
    # console` a login prompt.
    for vm in $LOGIN_VMS; do
        t=0; rc=1
        while [ "$t" -lt "$GUEST_TIMEOUT" ]; do
            grep -q " login: " "/lab/.vmctl/vms/$vm/console.log" && { rc=0; break; }
            sleep 2; t=$((t + 2))
        done
        [ "$rc" = 0 ] || FAILED=1
        say "@@NESTED step=console-login rc=$rc want=0 vm=$vm secs=$t"
    done
    [ -n "$NET_LISTENER" ] && net_phase
    step plan-noop 0 vmctl plan --detailed-exitcode
    cp /lab/vmctl-2.kdl /lab/vmctl.kdl
    step plan-change 2 vmctl plan --detailed-exitcode
    step apply-change 0 vmctl apply --auto-approve || return
    wait_memory "$CHANGED_VM" "$EXPECT_MIN_MIB" "$EXPECT_MAX_MIB"
    # The restart asked the old guest to shut down: the ACPI power button
    # must have reached it and it must have powered off by itself.
    # (debian-12-minimal's acpid script says so; debian-12's systemd powers
    # off and the kernel's last words are "reboot: Power down".)
    if grep -qE "power button pressed, powering off|reboot: Power down" "/lab/.vmctl/vms/$CHANGED_VM/console.log"; then
        rc=0
    else
        rc=1; FAILED=1
    fi
    say "@@NESTED step=graceful-poweroff rc=$rc want=0 vm=$CHANGED_VM"
    wait_agents 2
    report 2
    step plan-noop-2 0 vmctl plan --detailed-exitcode
    if [ -n "$GROW_DISKS" ]; then
        # Phase 3: the changed VM's last disk grows; the guest must see it.
        cp /lab/vmctl-3.kdl /lab/vmctl.kdl
        step plan-grow 2 vmctl plan --detailed-exitcode
        step apply-grow 0 vmctl apply --auto-approve || return
        wait_disks "$CHANGED_VM" "$GROW_DISKS"
        # A debian-12 guest grows its root filesystem after its disk.
        [ "${GROW_ROOT_MIN:-0}" -gt 0 ] && wait_root_fs "$CHANGED_VM" "$GROW_ROOT_MIN"
        wait_agents 3
        report 3
        step plan-noop-3 0 vmctl plan --detailed-exitcode
    fi
    [ -n "$HOT_VM" ] || return
    # Phase 4: HOT_VM gets vCPUs up to its max and 128 MiB more, live: the
    # plan says hot-add (no restart), the VMM keeps its pid, the guest's
    # nproc and MemTotal grow.
    pid=$(cat "/lab/.vmctl/vms/$HOT_VM/vmm.pid" 2>/dev/null)
    cp /lab/vmctl-4.kdl /lab/vmctl.kdl
    step plan-hot-add 2 vmctl plan --detailed-exitcode
    vmctl plan > /tmp/plan4.txt 2>&1
    sed 's/^/  | /' /tmp/plan4.txt | tail -n 20
    if grep -q "~ $HOT_VM hot-add-cpu" /tmp/plan4.txt && grep -q "~ $HOT_VM hot-add-memory" /tmp/plan4.txt \
        && ! grep -q "~! $HOT_VM restart" /tmp/plan4.txt; then rc=0; else rc=1; FAILED=1; fi
    say "@@NESTED step=plan-hot-add-live rc=$rc want=0"
    step apply-hot-add 0 vmctl apply --auto-approve || return
    wait_cpus "$HOT_VM" "$HOT_CPUS" hot-added-cpus
    wait_memory "$HOT_VM" "$HOT_MIN_MIB" "$HOT_MAX_MIB" hot-added-memory
    same_pid "$HOT_VM" "$pid" hot-add-same-pid
    wait_agents 4
    report 4
    step plan-noop-4 0 vmctl plan --detailed-exitcode
    # Phase 5: back to the boot vCPU count, live (the guest offlines and
    # ejects the vCPU).
    cp /lab/vmctl-5.kdl /lab/vmctl.kdl
    step plan-hot-remove 2 vmctl plan --detailed-exitcode
    step apply-hot-remove 0 vmctl apply --auto-approve || return
    wait_cpus "$HOT_VM" "$HOT_BOOT_CPUS" hot-removed-cpus
    same_pid "$HOT_VM" "$pid" hot-remove-same-pid
    wait_agents 5
    report 5
    step plan-noop-5 0 vmctl plan --detailed-exitcode
}

# --vmm-only: each VM's VMM started directly from its vm.json.
scenario_vmm_only() {
    for vm in $VMS; do
        d=/lab/.vmctl/vms/$vm
        mkdir -p "$d/disks"
        while IFS='=' read -r name size; do
            [ -n "$name" ] && truncate -s "$size" "$d/disks/$name.raw"
        done < "$d/disks.list"
        setsid vmctl __vmm --vm-dir "$d" > "$d/vmm.log" 2>&1 &
        say "started VMM for $vm (pid $!)"
    done
    wait_agents 1
    report 1
    [ "$FAILED" = 0 ] && [ "$ALWAYS_DUMP" != 1 ] || LOG_LINES=400 dump_logs
    for pid in $(pidof vmctl); do kill "$pid"; done
    sleep 2
    left=$(pidof vmctl)
    if [ -z "$left" ]; then rc=0; else rc=1; FAILED=1; fi
    say "@@NESTED step=no-vmm-left rc=$rc want=0 pids=$left"
}

# --boot-loop: boot the VMs in BOOT_VMS (kernel + initrd + BOOT_CMDLINE of
# the debian-12 image; several VMs boot at the same time, as after `apply`)
# BOOT_N times under each VMM in BOOT_VMMS (interleaved), one round at a
# time. A VM's boot ends when its guest agent reports (ok), its VMM exits
# first (crash: a triple fault ends both vmctl's VMM and QEMU -no-reboot),
# or after BOOT_TIMEOUT s (timeout). Looked at every 0.1 s; `ms` is the time
# from just before the VMM was started (L1's /proc/uptime, 10 ms ticks).
# One marker per VM and boot:
#   @@BOOT vmm=<vmctl|qemu> vm=<name> n=<i> result=<ok|crash|timeout> secs=<s> ms=<ms> detail=<...>

# up_ms: L1's uptime in milliseconds (the `1` prefix keeps a fraction like
# `05` from being read as octal).
up_ms() {
    read -r u _ < /proc/uptime
    echo $(( (${u%.*} * 100 + 1${u#*.} - 100) * 10 ))
}

# boot_start VMM VM: start it; echoes the run directory, sets the pid file.
boot_start() {
    vd=/lab/.vmctl/vms/$2
    if [ "$1" = vmctl ]; then
        rm -f "$vd/console.log" "$vd/vmm.exit" "$vd/vmm.log" "$vd/vmm.pid" "$vd/api.sock" "$vd/console.sock"
        setsid vmctl __vmm --vm-dir "$vd" > "$vd/vmm.log" 2>&1 &
        echo $! > "/tmp/boot-$2.pid"
        return
    fi
    qd=/tmp/qemu-boot/$2
    rm -rf "$qd"; mkdir -p "$qd"
    . "$vd/boot.env"
    disks=""
    i=0
    while IFS='=' read -r name size; do
        [ -n "$name" ] || continue
        disks="$disks -drive file=$vd/disks/$name.raw,if=none,format=raw,id=d$i -device virtio-blk-device,drive=d$i"
        i=$((i + 1))
    done < "$vd/disks.list"
    # shellcheck disable=SC2086
    qemu-system-x86_64 -L /usr/share/qemu -M microvm -accel kvm -cpu host \
        -m "$BOOT_MIB" -smp "$BOOT_CPUS" -nodefaults -no-user-config \
        -display none -monitor none -no-reboot \
        -kernel "$BOOT_KERNEL" -initrd "$BOOT_INITRD" -append "$BOOT_CMDLINE" \
        -serial "file:$qd/console.log" $disks > "$qd/qemu.out" 2>&1 &
    echo $! > "/tmp/boot-$2.pid"
}

boot_dir() {
    if [ "$1" = vmctl ]; then echo "/lab/.vmctl/vms/$2"; else echo "/tmp/qemu-boot/$2"; fi
}

# boot_round VMM N: boot every VM of BOOT_VMS at once, wait, report each.
boot_round() {
    for vm in $BOOT_VMS; do
        up_ms > "/tmp/boot-$vm.start"
        boot_start "$1" "$vm"
        rm -f "/tmp/boot-$vm.result"
    done
    round_start=$(up_ms)
    t=0
    while [ "$t" -lt "$BOOT_TIMEOUT" ]; do
        pending=0
        for vm in $BOOT_VMS; do
            [ -f "/tmp/boot-$vm.result" ] && continue
            d=$(boot_dir "$1" "$vm")
            if grep -q '{"agent":"debian-12"' "$d/console.log" 2>/dev/null; then
                echo "ok $(( $(up_ms) - $(cat "/tmp/boot-$vm.start") ))" > "/tmp/boot-$vm.result"
            elif ! kill -0 "$(cat "/tmp/boot-$vm.pid")" 2>/dev/null; then
                echo "crash $(( $(up_ms) - $(cat "/tmp/boot-$vm.start") ))" > "/tmp/boot-$vm.result"
            else
                pending=1
            fi
        done
        [ "$pending" = 0 ] && break
        sleep 0.1
        t=$(( ($(up_ms) - round_start) / 1000 ))
    done
    for vm in $BOOT_VMS; do
        pid=$(cat "/tmp/boot-$vm.pid")
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    for vm in $BOOT_VMS; do
        d=$(boot_dir "$1" "$vm")
        if [ -f "/tmp/boot-$vm.result" ]; then read -r result ms < "/tmp/boot-$vm.result"; else result=timeout; ms=$(( $(up_ms) - $(cat "/tmp/boot-$vm.start") )); fi
        secs=$((ms / 1000))
        if [ "$1" = vmctl ]; then
            detail=$(tr -d '\n' < "$d/vmm.exit" 2>/dev/null)
        else
            detail="qemu: $(tr '\n' ' ' < "$d/qemu.out" | cut -c1-300)"
        fi
        if [ "$result" != ok ]; then
            tail -n 12 "$d/console.log" 2>/dev/null | sed 's/[^[:print:]]//g' | sed "s|^|@@LOG $1-$vm-$2 console.log: |"
            [ -f "$d/vmm.log" ] && tail -n 5 "$d/vmm.log" | sed "s|^|@@LOG $1-$vm-$2 vmm.log: |"
        fi
        say "@@BOOT vmm=$1 vm=$vm n=$2 result=$result secs=$secs ms=$ms detail=$detail"
    done
}

scenario_boot_loop() {
    for vm in $BOOT_VMS; do
        d=/lab/.vmctl/vms/$vm
        mkdir -p "$d/disks"
        while IFS='=' read -r name size; do
            [ -n "$name" ] && truncate -s "$size" "$d/disks/$name.raw"
        done < "$d/disks.list"
    done
    n=1
    while [ "$n" -le "$BOOT_N" ]; do
        for vmm in $BOOT_VMMS; do
            boot_round "$vmm" "$n"
        done
        n=$((n + 1))
    done
    say "@@NESTED step=boot-loop rc=0 want=0"
}

# --net-bench (docs/nested-lab.md): iperf3 throughput of the same two
# guests under vmctl's VMM and under QEMU microvm, all running at once,
# measured interleaved (vmctl, qemu, qemu-plain, vmctl, ...). The QEMU
# pairs boot from live copies of the vmctl VMs' disks (`vmctl backup`), so
# they have the same addresses, MACs and host keys: each QEMU pair lives in
# its own network namespace inside L1 (a bridge with the same host address,
# its TAPs, its iperf3 server). `qemu` is QEMU's virtio-net as it comes
# (checksum and TSO offloads, mergeable RX buffers, event index, indirect
# descriptors); `qemu-plain` has the offloads, mergeable RX buffers and
# event index off (close to vmctl's device, which offers VERSION_1 and MAC). One marker per run:
#   @@NETBENCH vmm=<vmctl|qemu|qemu-plain> path=<vm-host|host-vm|vm-vm> n=<i> mbits=<f>
jstr() { sed -n "s/^ *\"$2\": \"\([^\"]*\)\".*/\1/p" "$1" | head -n 1; }
jnum() { sed -n "s/^ *\"$2\": \([0-9]*\).*/\1/p" "$1" | head -n 1; }

# iproute2's ip by path: L1's busybox shell runs its own `ip` applet
# first, which has no `netns` and no `-n`.
# in VMM CMD...: CMD in the VMM's network namespace (vmctl's is L1's own).
in_ns() {
    i_vmm=$1; shift
    if [ "$i_vmm" = vmctl ]; then "$@"; else /sbin/ip netns exec "$i_vmm" "$@"; fi
}

# gssh VMM VM CMD: CMD in the guest as its user (vmctl: `vmctl ssh`; QEMU:
# ssh in its namespace with the host keys vmctl pinned for the same guests).
gssh() {
    g_vmm=$1; g_vm=$2; shift 2
    if [ "$g_vmm" = vmctl ]; then
        vmctl ssh "$g_vm" -- "$@"
    else
        /sbin/ip netns exec "$g_vmm" ssh -o UserKnownHostsFile=/tmp/qemu-known_hosts \
            -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes \
            -o HostKeyAlgorithms=ssh-ed25519 -o BatchMode=yes -o ConnectTimeout=10 \
            -l alice "$(cat "/tmp/qemu-ip-$g_vm")" "$@"
    fi
}

# bench_servers VMM: iperf3 servers on the host side and on the listener VM.
bench_servers() {
    in_ns "$1" iperf3 -s -D -B "$NET_HOST_IP" -I "/tmp/iperf3-$1.pid"
    step "$1-iperf3-server" 0 gssh "$1" "$NET_LISTENER" \
        "setsid -f iperf3 -s -B $NET_LISTENER_IP < /dev/null > /dev/null 2>&1; for i in \$(seq 100); do ss -Hltn 'sport = :5201' | grep -q . && exit 0; sleep 0.1; done; exit 1"
}

# bench_run VMM N: one iperf3 run of each path.
bench_run() {
    for path in vm-host host-vm vm-vm; do
        case $path in
            vm-host) args="-c $NET_HOST_IP" ;;
            host-vm) args="-R -c $NET_HOST_IP" ;;
            vm-vm) args="-c $NET_LISTENER_IP" ;;
        esac
        m=$(gssh "$1" "$NET_CLIENT" "iperf3 -f m -t $NET_BENCH_SECS $args" 2>/tmp/iperf3.err | awk '/receiver/ {v=$7} END {print v}')
        [ -n "$m" ] || { FAILED=1; sed 's/^/  iperf3 | /' /tmp/iperf3.err | tail -n 5; }
        say "@@NETBENCH vmm=$1 path=$path n=$2 mbits=$m"
    done
}

# qemu_pair NAME NET_OPTS: the two guests under QEMU in namespace NAME,
# on the backed-up disks (`snapshot=on`: each QEMU writes to its own
# temporary overlay, so both pairs share the copies).
qemu_pair() {
    /sbin/ip netns add "$1"
    /sbin/ip -n "$1" link set lo up
    /sbin/ip -n "$1" link add qbr0 type bridge
    /sbin/ip -n "$1" addr add "$NET_HOST_IP/24" dev qbr0
    /sbin/ip -n "$1" link set qbr0 up
    for vm in $NET_LISTENER $NET_CLIENT; do
        q=/lab/qemu/$vm
        m=$q/machine.json
        /sbin/ip netns exec "$1" qemu-system-x86_64 -L /usr/share/qemu -M microvm -accel kvm -cpu host \
            -m "$(jnum "$m" memory_mib)" -smp "$(jnum "$m" cpus)" -nodefaults -no-user-config \
            -display none -monitor none -no-reboot \
            -kernel "$(jstr "$m" kernel)" -initrd "$(jstr "$m" initrd)" -append "$(jstr "$m" cmdline)" \
            -serial "file:$q/console-$1.log" \
            -drive "file=$q/root.raw,if=none,format=raw,id=d0,snapshot=on" -device virtio-blk-device,drive=d0 \
            -netdev "tap,id=n0,ifname=qt-$vm,script=/tmp/qemu-ifup,downscript=no" \
            -device "virtio-net-device,netdev=n0,mac=$(jstr "$m" mac)$2" > "$q/qemu-$1.out" 2>&1 &
        echo $! >> /tmp/qemu.pids
    done
}

qemu_wait() {
    for vm in $NET_LISTENER $NET_CLIENT; do
        t=0; rc=1
        while [ "$t" -lt "$GUEST_TIMEOUT" ]; do
            gssh "$1" "$vm" true 2>/dev/null && { rc=0; break; }
            sleep 5; t=$((t + 5))
        done
        if [ "$rc" != 0 ]; then
            FAILED=1
            tail -n 20 "/lab/qemu/$vm/console-$1.log" | sed "s|^|@@LOG $1-$vm console.log: |"
            sed "s|^|@@LOG $1-$vm qemu.out: |" "/lab/qemu/$vm/qemu-$1.out"
        fi
        say "@@NESTED step=$1-ssh-$vm rc=$rc want=0 secs=$t"
    done
}

scenario_net_bench() {
    step apply 0 vmctl apply --auto-approve || return
    wait_agents 1
    wait_nic "$NET_LISTENER" "$NET_LISTENER_IP" nic-listener || return
    wait_nic "$NET_CLIENT" "$NET_CLIENT_IP" nic-client || return
    expect_out ssh-listener-hostname "$NET_LISTENER_HOST" vmctl ssh "$NET_LISTENER" -- hostname
    expect_out ssh-client-hostname "$NET_CLIENT_HOST" vmctl ssh "$NET_CLIENT" -- hostname
    : > /tmp/qemu-known_hosts
    : > /tmp/qemu.pids
    mkdir -p /lab/qemu
    for vm in $NET_LISTENER $NET_CLIENT; do
        q=/lab/qemu/$vm
        step "backup-$vm" 0 vmctl backup "$vm" -o "$q" || return
        cp "/lab/.vmctl/vms/$vm/machine.json" "$q/machine.json"
        [ "$vm" = "$NET_LISTENER" ] && ip=$NET_LISTENER_IP || ip=$NET_CLIENT_IP
        echo "$ip" > "/tmp/qemu-ip-$vm"
        echo "$ip $(cat "/lab/.vmctl/vms/$vm/ssh_host_key")" >> /tmp/qemu-known_hosts
    done
    # QEMU puts a snapshot=on overlay in /var/tmp (it ignores TMPDIR).
    mkdir -p /var/tmp
    printf '#!/bin/sh\n/sbin/ip link set "$1" master qbr0 up\n' > /tmp/qemu-ifup
    chmod 755 /tmp/qemu-ifup
    qemu_pair qemu ""
    qemu_pair qemu-plain ",csum=off,guest_csum=off,host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off,mrg_rxbuf=off,event_idx=off"
    qemu_wait qemu
    qemu_wait qemu-plain
    if [ "$FAILED" = 0 ]; then
        for vmm in vmctl qemu qemu-plain; do bench_servers "$vmm"; done
        n=1
        while [ "$n" -le "$NET_BENCH_N" ]; do
            for vmm in vmctl qemu qemu-plain; do bench_run "$vmm" "$n"; done
            n=$((n + 1))
        done
    fi
    for pid in $(cat /tmp/qemu.pids); do kill "$pid" 2>/dev/null; done
    for vmm in vmctl qemu qemu-plain; do kill "$(cat "/tmp/iperf3-$vmm.pid" 2>/dev/null)" 2>/dev/null; done
    sleep 2
    /sbin/ip netns del qemu
    /sbin/ip netns del qemu-plain
    step destroy 0 vmctl destroy --auto-approve
}

if [ "$rc" = 0 ] && [ "$MODE" = net-bench ]; then
    scenario_net_bench
elif [ "$rc" = 0 ] && [ "$MODE" = vmm-only ]; then
    scenario_vmm_only
elif [ "$rc" = 0 ] && [ "$MODE" = boot-loop ]; then
    scenario_boot_loop
elif [ "$rc" = 0 ]; then
    scenario
    [ "$FAILED" = 0 ] && [ "$ALWAYS_DUMP" != 1 ] || LOG_LINES=400 dump_logs
    step destroy 0 vmctl destroy --auto-approve
    if [ -n "$NET_LISTENER" ]; then
        links > /tmp/links-after
        if diff /tmp/links-before /tmp/links-after > /tmp/links.diff; then rc=0; else rc=1; FAILED=1; fi
        say "@@NESTED step=no-net-left rc=$rc want=0 links=$(tr '\n' ' ' < /tmp/links-after) diff=$(tr '\n' ' ' < /tmp/links.diff)"
    fi
    left=$(pidof vmctl)
    if [ -z "$left" ]; then rc=0; else rc=1; FAILED=1; fi
    say "@@NESTED step=no-vmm-left rc=$rc want=0 pids=$left"
    [ "$FAILED" = 0 ] || dump_logs
fi
say "@@NESTED done failed=$FAILED"
cd /
umount /lab 2>/dev/null
sync
poweroff -f
