//! `bramble scale` and `bramble rollout status|history|undo|restart` for Deployments and
//! DaemonSets (`scale`: Deployments).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bramble_api::Kind;
use serde_json::{Value, json};

use crate::args::{RolloutCommand, ScaleArgs};
use crate::client::Client;

/// `deployment/web`, `deploy web`, `ds/agent` or `web` (a Deployment) → the kind and name;
/// `kinds` are those the command serves.
fn target_of(target: &[String], kinds: &[Kind]) -> Result<(Kind, String)> {
    let (kind, name) = match target {
        [one] => match one.split_once('/') {
            Some((k, n)) => (Some(k.to_string()), n.to_string()),
            None => (None, one.clone()),
        },
        [k, n] => (Some(k.clone()), n.clone()),
        _ => bail!("name one object: deployment/NAME or daemonset/NAME"),
    };
    let kind = match kind {
        None => Kind::Deployment,
        Some(k) => match Kind::from_user(&k) {
            Some(kind) if kinds.contains(&kind) => kind,
            _ => {
                let names: Vec<&str> = kinds.iter().map(|k| k.plural()).collect();
                bail!("{k:?}: this works on {} only", names.join(" and "));
            }
        },
    };
    Ok((kind, name))
}

/// `deployment/web`, `deploy web` or `web` → `web`.
fn deployment_name(target: &[String]) -> Result<String> {
    Ok(target_of(target, &[Kind::Deployment])?.1)
}

/// Reads, changes and writes back a Deployment, retrying on conflicts.
fn update(client: &Client, ns: &str, name: &str, change: impl Fn(&mut Value)) -> Result<Value> {
    update_kind(client, Kind::Deployment, ns, name, change)
}

/// Reads, changes and writes back an object, retrying on conflicts.
fn update_kind(
    client: &Client,
    kind: Kind,
    ns: &str,
    name: &str,
    change: impl Fn(&mut Value),
) -> Result<Value> {
    let path = kind.path(Some(ns), Some(name));
    for _ in 0..5 {
        let mut d = client.get(&path)?.ok()?.json()?;
        change(&mut d);
        let r = client.put_json(&path, &d)?;
        if r.code == 409 {
            continue;
        }
        return r.ok()?.json();
    }
    bail!("{} {name:?} kept changing; try again", kind.singular())
}

/// The revision history the controller keeps in an annotation, oldest first.
fn history(d: &Value) -> Vec<Value> {
    d["metadata"]["annotations"][bramble_api::deployment::HISTORY_ANNOTATION]
        .as_str()
        .and_then(|h| serde_json::from_str::<Vec<Value>>(h).ok())
        .unwrap_or_default()
}

pub fn scale(client: &Client, ns: Option<&str>, a: &ScaleArgs) -> Result<()> {
    if a.replicas < 0 {
        bail!("--replicas must be >= 0");
    }
    let name = deployment_name(&a.target)?;
    update(client, ns.unwrap_or("default"), &name, |d| {
        d["spec"]["replicas"] = json!(a.replicas)
    })?;
    println!("deployment.apps/{name} scaled");
    Ok(())
}

pub fn run(client: &Client, ns: Option<&str>, cmd: &RolloutCommand) -> Result<()> {
    let ns = ns.unwrap_or("default");
    match cmd {
        RolloutCommand::History { target } => {
            let (kind, name) = target_of(target, &[Kind::Deployment, Kind::DaemonSet])?;
            let d = client
                .get(&kind.path(Some(ns), Some(&name)))?
                .ok()?
                .json()?;
            let rows: Vec<Vec<String>> = history(&d)
                .iter()
                .map(|r| {
                    let cause = r["changeCause"]
                        .as_str()
                        .filter(|c| !c.is_empty())
                        .unwrap_or("<none>");
                    vec![r["revision"].to_string(), cause.to_string()]
                })
                .collect();
            println!("{}/{name}", kind.qualified());
            print!(
                "{}",
                crate::table::print(Some(&["REVISION", "CHANGE-CAUSE"]), &rows)
            );
        }
        RolloutCommand::Undo {
            target,
            to_revision,
        } => {
            let (kind, name) = target_of(target, &[Kind::Deployment, Kind::DaemonSet])?;
            let d = client
                .get(&kind.path(Some(ns), Some(&name)))?
                .ok()?
                .json()?;
            let h = history(&d);
            let chosen = match to_revision {
                Some(n) => h
                    .iter()
                    .find(|r| r["revision"].as_i64() == Some(*n))
                    .cloned(),
                None => h.len().checked_sub(2).map(|i| h[i].clone()),
            };
            let Some(rev) = chosen else {
                bail!(
                    "no {} revision to go back to",
                    to_revision.map_or("previous".to_string(), |n| n.to_string())
                );
            };
            let template = rev["template"].clone();
            update_kind(client, kind, ns, &name, |d| {
                d["spec"]["template"] = template.clone()
            })?;
            println!(
                "{}/{name} rolled back to revision {}",
                kind.qualified(),
                rev["revision"]
            );
        }
        RolloutCommand::Restart { target } => {
            let (kind, name) = target_of(target, &[Kind::Deployment, Kind::DaemonSet])?;
            let now = bramble_api::time::now_secs();
            update_kind(client, kind, ns, &name, |d| {
                d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] =
                    json!(bramble_api::time::format_rfc3339(now));
            })?;
            println!("{}/{name} restarted", kind.qualified());
        }
        RolloutCommand::Status { target, timeout } => {
            let (kind, name) = target_of(target, &[Kind::Deployment, Kind::DaemonSet])?;
            if kind == Kind::DaemonSet {
                return daemonset_status(client, ns, &name, *timeout);
            }
            let path = Kind::Deployment.path(Some(ns), Some(&name));
            let deadline = Instant::now() + Duration::from_secs(*timeout);
            let mut last = String::new();
            loop {
                let d = client.get(&path)?.ok()?.json()?;
                let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
                let st = &d["status"];
                let n = |k: &str| st[k].as_i64().unwrap_or(0);
                let observed =
                    n("observedGeneration") >= d["metadata"]["generation"].as_i64().unwrap_or(0);
                let msg = if !observed {
                    "Waiting for deployment spec update to be observed...".to_string()
                } else if n("updatedReplicas") < want {
                    format!(
                        "Waiting for deployment {name:?} rollout to finish: {} of {want} updated replicas are available...",
                        n("updatedReplicas")
                    )
                } else if n("replicas") > n("updatedReplicas") {
                    format!(
                        "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...",
                        n("replicas") - n("updatedReplicas")
                    )
                } else if n("availableReplicas") < want {
                    format!(
                        "Waiting for deployment {name:?} rollout to finish: {} of {want} updated replicas are available...",
                        n("availableReplicas")
                    )
                } else {
                    println!("deployment {name:?} successfully rolled out");
                    return Ok(());
                };
                if msg != last {
                    println!("{msg}");
                    last = msg;
                }
                if Instant::now() > deadline {
                    bail!("timed out waiting for the rollout of {name:?}");
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
    Ok(())
}

/// `rollout status` of a DaemonSet, with kubectl's messages.
fn daemonset_status(client: &Client, ns: &str, name: &str, timeout: u64) -> Result<()> {
    let path = Kind::DaemonSet.path(Some(ns), Some(name));
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut last = String::new();
    loop {
        let d = client.get(&path)?.ok()?.json()?;
        let st = &d["status"];
        let n = |k: &str| st[k].as_i64().unwrap_or(0);
        let observed = n("observedGeneration") >= d["metadata"]["generation"].as_i64().unwrap_or(0);
        let want = n("desiredNumberScheduled");
        let msg = if !observed {
            "Waiting for daemon set spec update to be observed...".to_string()
        } else if n("updatedNumberScheduled") < want {
            format!(
                "Waiting for daemon set {name:?} rollout to finish: {} out of {want} new pods have been updated...",
                n("updatedNumberScheduled")
            )
        } else if n("numberAvailable") < want {
            format!(
                "Waiting for daemon set {name:?} rollout to finish: {} of {want} updated pods are available...",
                n("numberAvailable")
            )
        } else {
            println!("daemon set {name:?} successfully rolled out");
            return Ok(());
        };
        if msg != last {
            println!("{msg}");
            last = msg;
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for the rollout of {name:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
