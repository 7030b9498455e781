#!/usr/bin/env bash
# vmctl in any CI, in two steps (docs/workflows.md):
#
#   ci.sh pr      on a pull request: fmt --check, validate, plan --out; leaves
#                 $VMCTL_OUT/plan.json (the saved plan: keep it as an artifact)
#                 and $VMCTL_OUT/plan.md (post it as the PR comment)
#   ci.sh merge   after the merge: apply exactly that saved plan, or refuse
#                 (exit 1, nothing run) if anything changed since it was made
#
# Run it from the repository root on the host the VMs run on. Environment:
#   VMCTL        the vmctl binary            (default: vmctl)
#   VMCTL_FILE   the KDL file                (default: vmctl.kdl)
#   VMCTL_OUT    where the plan files go     (default: vmctl-plan)
# .ci/run runs this script against a one-VM diag lab, so it cannot rot.
set -euo pipefail

vmctl=${VMCTL:-vmctl}
file=${VMCTL_FILE:-vmctl.kdl}
out=${VMCTL_OUT:-vmctl-plan}

case "${1:-}" in
pr)
    "$vmctl" fmt --check # every *.kdl below here is formatted (lists the others)
    "$vmctl" validate -f "$file"
    mkdir -p "$out"
    # The markdown goes to stdout, the saved plan to plan.json; exit 2 = changes.
    status=0
    "$vmctl" plan -f "$file" --out "$out/plan.json" --format markdown \
        --detailed-exitcode >"$out/plan.md" || status=$?
    case $status in
    0) echo "no changes" ;;
    2) echo "changes: see $out/plan.md" ;;
    *) exit "$status" ;;
    esac
    ;;
merge)
    "$vmctl" show "$out/plan.json"
    "$vmctl" apply "$out/plan.json"
    ;;
*)
    echo "usage: $0 pr|merge" >&2
    exit 64
    ;;
esac
