//! A lock holder in its own process, for tests that must really kill or
//! pause a coordinator (`kill -9`, `SIGSTOP`): takes the cluster lock, prints
//! `LOCKED <token>`, then obeys one command per stdin line and answers one
//! line each:
//!
//! - `put NAME JSON` / `put-raw NAME JSON`: a guarded VM record write (`raw`:
//!   even when the lease is known lost, so etcd itself has to refuse it);
//! - `journal JSON`: a guarded journal append (`OK <seq>`);
//! - `lost`: `LOST true|false`;
//! - `release`: release the lock and exit.
//!
//! Answers are `OK …` or `ERR <kind> <message>`. End of input drops the lock.
//! Usage: `vmctl-cluster-holder ENDPOINTS CLUSTER TTL_MS COMMAND`.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use vmctl_cluster::{AcquireOptions, ClusterError, Etcd, EtcdConfig, LockGuard};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoints, cluster, ttl_ms, command] = args.as_slice() else {
        eprintln!("usage: vmctl-cluster-holder ENDPOINTS CLUSTER TTL_MS COMMAND");
        return ExitCode::from(2);
    };
    let Ok(ttl_ms) = ttl_ms.parse::<u64>() else {
        eprintln!("TTL_MS must be a number");
        return ExitCode::from(2);
    };
    let mut cfg = EtcdConfig::new(EtcdConfig::parse_endpoints(endpoints), cluster.as_str());
    cfg.lock_ttl = Duration::from_millis(ttl_ms);
    cfg.request_timeout = Duration::from_secs(2);
    cfg.retry_for = Duration::from_secs(10);
    let lock = Etcd::connect(cfg).and_then(|e| {
        e.lock(&AcquireOptions {
            command: command.clone(),
            wait: Duration::ZERO,
        })
    });
    let mut out = std::io::stdout().lock();
    let lock = match lock {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(out, "{}", err_line(&e));
            return ExitCode::from(1);
        }
    };
    if writeln!(out, "LOCKED {}", lock.token())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::from(1);
    }
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let answer = match obey(&lock, &line) {
            Some(a) => a,
            None => {
                return match lock.release() {
                    Ok(()) => {
                        let _ = writeln!(out, "OK");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        let _ = writeln!(out, "{}", err_line(&e));
                        ExitCode::from(1)
                    }
                };
            }
        };
        if writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
    ExitCode::SUCCESS
}

/// One command's answer; None for `release`.
fn obey(lock: &LockGuard, line: &str) -> Option<String> {
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    let result = match cmd {
        "put" | "put-raw" => {
            let (name, json) = rest.split_once(' ').unwrap_or((rest, "null"));
            let value = serde_json::from_str(json).unwrap_or(serde_json::Value::Null);
            if cmd == "put-raw" {
                lock.skip_local_loss_check_for_tests();
            }
            lock.put_vm(name, &value).map(|()| "OK".to_string())
        }
        "journal" => {
            let value = serde_json::from_str(rest).unwrap_or(serde_json::Value::Null);
            lock.append_journal(&value).map(|s| format!("OK {s}"))
        }
        "lost" => Ok(format!("LOST {}", lock.is_lost())),
        "release" => return None,
        other => Ok(format!("ERR usage unknown command {other:?}")),
    };
    Some(result.unwrap_or_else(|e| err_line(&e)))
}

fn err_line(e: &ClusterError) -> String {
    format!("ERR {} {}", e.kind(), e.to_string().replace('\n', " "))
}
