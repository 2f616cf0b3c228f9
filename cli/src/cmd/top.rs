//! `bramble top nodes|pods`: the metrics API (`metrics.k8s.io/v1beta1`, from the agents'
//! reports), in kubectl's columns.

use anyhow::Result;
use bramble_api::quantity::Quantity;
use bramble_api::table;
use serde_json::Value;

use crate::args::TopCommand;
use crate::client::Client;
use crate::cmd::encode;

/// Millicores and MiB of a `usage` object.
fn usage(u: &Value) -> (i64, i64) {
    let q = |k: &str| u[k].as_str().and_then(|t| Quantity::parse(t).ok());
    (
        q("cpu").map_or(0, |c| c.millis()),
        q("memory").map_or(0, |m| m.value() >> 20),
    )
}

fn items(client: &Client, path: &str) -> Result<Vec<Value>> {
    let v = client.get(path)?.ok()?.json()?;
    Ok(v["items"].as_array().cloned().unwrap_or_default())
}

pub fn run(client: &Client, ns_flag: Option<&str>, cmd: &TopCommand) -> Result<()> {
    let base = "/apis/metrics.k8s.io/v1beta1";
    let (headers, rows): (Vec<&str>, Vec<Vec<String>>) = match cmd {
        TopCommand::Nodes => {
            let nodes = items(client, "/api/v1/nodes")?;
            let alloc = |name: &str, k: &str| -> Option<Quantity> {
                nodes
                    .iter()
                    .find(|n| n["metadata"]["name"] == name)
                    .and_then(|n| n["status"]["allocatable"][k].as_str())
                    .and_then(|t| Quantity::parse(t).ok())
            };
            let pct = |used: i64, of: Option<i64>| match of {
                Some(of) if of > 0 => format!("{}%", used * 100 / of),
                _ => "<unknown>".to_string(),
            };
            let rows = items(client, &format!("{base}/nodes"))?
                .iter()
                .map(|m| {
                    let name = m["metadata"]["name"].as_str().unwrap_or("").to_string();
                    let (cpu, mem) = usage(&m["usage"]);
                    vec![
                        name.clone(),
                        format!("{cpu}m"),
                        pct(cpu, alloc(&name, "cpu").map(|q| q.millis())),
                        format!("{mem}Mi"),
                        pct(mem, alloc(&name, "memory").map(|q| q.value() >> 20)),
                    ]
                })
                .collect();
            (
                vec!["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"],
                rows,
            )
        }
        TopCommand::Pods {
            all_namespaces,
            selector,
            containers,
        } => {
            let mut path = match (all_namespaces, ns_flag) {
                (true, _) => format!("{base}/pods"),
                (false, ns) => format!("{base}/namespaces/{}/pods", ns.unwrap_or("default")),
            };
            if let Some(l) = selector {
                path.push_str(&format!("?labelSelector={}", encode(l)));
            }
            let mut rows = Vec::new();
            for m in items(client, &path)? {
                let ns = m["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let name = m["metadata"]["name"].as_str().unwrap_or("").to_string();
                let cs = m["containers"].as_array().cloned().unwrap_or_default();
                let mut lead = Vec::new();
                if *all_namespaces {
                    lead.push(ns);
                }
                if *containers {
                    for c in cs {
                        let (cpu, mem) = usage(&c["usage"]);
                        let mut r = lead.clone();
                        r.extend([
                            name.clone(),
                            c["name"].as_str().unwrap_or("").to_string(),
                            format!("{cpu}m"),
                            format!("{mem}Mi"),
                        ]);
                        rows.push(r);
                    }
                } else {
                    let (cpu, mem) = cs
                        .iter()
                        .map(|c| usage(&c["usage"]))
                        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
                    let mut r = lead;
                    r.extend([name, format!("{cpu}m"), format!("{mem}Mi")]);
                    rows.push(r);
                }
            }
            let mut h = Vec::new();
            if *all_namespaces {
                h.push("NAMESPACE");
            }
            h.push(if *containers { "POD" } else { "NAME" });
            if *containers {
                h.push("NAME");
            }
            h.extend(["CPU(cores)", "MEMORY(bytes)"]);
            (h, rows)
        }
    };
    if rows.is_empty() {
        anyhow::bail!(
            "metrics not available yet (agents report every --metrics-interval, 15s by default; hollow nodes report none)"
        );
    }
    print!("{}", table::print(Some(&headers), &rows));
    Ok(())
}
