//! The debian-12 agent's command handling (image/debian-12/vmctl-agent,
//! docs/runtime.md "The agent channel"), run by bash on the host: the
//! script is sourced with `VMCTL_AGENT_LIB=1` (functions only) and
//! `findmnt`/`fsfreeze` are replaced by shell functions that describe a
//! guest's mounts and log what would be frozen. The real thing runs in the
//! nested lab (docs/nested-lab.md).

use std::path::Path;
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/debian-12/vmctl-agent");

/// Runs `body` after sourcing the agent with fakes; replies go to
/// `<dir>/replies`, fsfreeze calls to `<dir>/fsfreeze.log`. Returns
/// (replies, fsfreeze calls).
fn run(dir: &Path, body: &str) -> (Vec<serde_json::Value>, Vec<String>) {
    let prelude = format!(
        r#"
set -u
# A watchdog's `sleep` left running must not hold the test's pipes.
exec >{dir}/stdout 2>{dir}/stderr
VMCTL_AGENT_LIB=1 . {SCRIPT}
D={dir}
FROZEN_MARK=$D/frozen
AGENT_CONSOLE=$D/console
findmnt() {{
    printf '%s\n' '/ /dev/vda ext4' '/data /dev/vdb1 xfs' '/srv/again /dev/vdb1 xfs' \
        '/boot/efi /dev/vda15 vfat' '/mnt/nfs srv:/x nfs4' '/run tmpfs tmpfs' \
        '/odd\x20dir /dev/vdc ext4'
}}
fsfreeze() {{
    echo "$*" >> $D/fsfreeze.log
    [ "$*" != "-f ${{FAIL_ON:-none}}" ]
}}
exec 3>>$D/replies
"#,
        dir = dir.display()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("{prelude}\n{body}\nwait\n"))
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "bash failed: {}{}",
        std::fs::read_to_string(dir.join("stdout")).unwrap_or_default(),
        std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
    );
    let replies = std::fs::read_to_string(dir.join("replies"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("reply {l:?}: {e}")))
        .collect();
    let calls = std::fs::read_to_string(dir.join("fsfreeze.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    (replies, calls)
}

fn jq_available() -> bool {
    Command::new("jq").arg("--version").output().is_ok()
}

#[test]
fn freeze_covers_virtio_ext4_and_xfs_root_last_and_thaw_reverses_it() {
    assert!(jq_available(), "jq is needed (.ci/run installs it)");
    let dir = tempfile::tempdir().unwrap();
    let (replies, calls) = run(
        dir.path(),
        r#"
handle_command '{"id":7,"cmd":"freeze"}'
[ -e "$FROZEN_MARK" ] || exit 9
handle_command '{"id":8,"cmd":"ping","nonce":"n\"1"}'
handle_command '{"id":9,"cmd":"thaw"}'
[ ! -e "$FROZEN_MARK" ] || exit 10
handle_command '{"id":10,"cmd":"thaw"}'
handle_command '{"id":11,"cmd":"reboot"}'
handle_command '{"cmd":"freeze","id":12}'
handle_command 'garbage'
handle_command '{"id":"13","cmd":"freeze"}'
kill $(jobs -p) 2>/dev/null
true
"#,
    );
    assert_eq!(
        calls,
        ["-f /data", "-f /", "-u /", "-u /data"],
        "one freeze per filesystem, root frozen last and thawed first"
    );
    let expect = serde_json::json!([
        {"id":7,"ok":true,"frozen":["/data","/"],"thaw_after_s":20},
        {"id":8,"ok":true,"agent":"debian-12","nonce":"n\"1","frozen":["/data","/"]},
        {"id":9,"ok":true,"thawed":["/data","/"]},
        {"id":10,"ok":true,"thawed":[]},
        {"id":11,"ok":false,"error":"unknown command"},
    ]);
    assert_eq!(serde_json::Value::Array(replies), expect);
    // Every reply is on the console too.
    let console = std::fs::read_to_string(dir.path().join("console")).unwrap();
    assert_eq!(
        console.matches("vmctl-agent: reply {\"id\":").count(),
        5,
        "{console}"
    );
}

/// Lines read one by one (as command_loop reads fd 3) are answered in
/// order; blank and non-command lines get no answer.
#[test]
fn command_lines_are_answered_in_order_and_noise_is_ignored() {
    assert!(jq_available(), "jq is needed (.ci/run installs it)");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("commands"),
        "\n{\"id\":1,\"cmd\":\"ping\"}\nnoise\n{\"id\":2,\"cmd\":\"freeze\"}\n{\"id\":3,\"cmd\":\"thaw\"}\n",
    )
    .unwrap();
    let (replies, calls) = run(
        dir.path(),
        r#"
# fd 3 reads the commands (and replies go to a file): EOF ends the read,
# so one pass of the loop body per line.
exec 4>>$D/replies
reply() { printf '%s\n' "$1" >&4; }
exec 3<$D/commands
while IFS= read -r -u 3 line; do handle_command "$line"; done
kill $(jobs -p) 2>/dev/null
true
"#,
    );
    let ids: Vec<u64> = replies.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(replies[2]["thawed"], serde_json::json!(["/data", "/"]));
    assert_eq!(calls, ["-f /data", "-f /", "-u /", "-u /data"]);
}

#[test]
fn a_freeze_without_thaw_is_thawed_by_the_watchdog() {
    assert!(jq_available(), "jq is needed (.ci/run installs it)");
    let dir = tempfile::tempdir().unwrap();
    // `wait` (after the body) waits for the watchdog to run out.
    let (replies, calls) = run(
        dir.path(),
        r#"
FREEZE_MAX=1
handle_command '{"id":1,"cmd":"freeze"}'
"#,
    );
    assert_eq!(replies[0]["frozen"], serde_json::json!(["/data", "/"]));
    assert_eq!(calls, ["-f /data", "-f /", "-u /", "-u /data"]);
    assert!(!dir.path().join("frozen").exists(), "the freeze ended");
    let console = std::fs::read_to_string(dir.path().join("console")).unwrap();
    assert!(console.contains("no thaw within 1 s: thawed"), "{console}");
    assert!(console.contains("\"thaw_after_s\":1"), "{console}");
}

#[test]
fn a_failed_freeze_thaws_what_it_froze_and_says_so() {
    assert!(jq_available(), "jq is needed (.ci/run installs it)");
    let dir = tempfile::tempdir().unwrap();
    let (replies, calls) = run(
        dir.path(),
        r#"
FAIL_ON=/
handle_command '{"id":3,"cmd":"freeze"}'
[ ! -e "$FROZEN_MARK" ] || exit 9
kill $(jobs -p) 2>/dev/null
true
"#,
    );
    assert_eq!(
        replies,
        [serde_json::json!({"id":3,"ok":false,"error":"fsfreeze -f / failed","frozen":[]})]
    );
    let console = std::fs::read_to_string(dir.path().join("console")).unwrap();
    assert!(console.contains("fsfreeze -f / failed"), "{console}");
    assert_eq!(calls, ["-f /data", "-f /", "-u /", "-u /data"]);
}
