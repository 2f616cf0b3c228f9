//! `bramble describe KIND NAME`: the object's identity, its spec and status, and its events.

use anyhow::{Result, bail};
use bramble_api::event::Event;
use bramble_api::{Kind, Object};
use serde_json::Value;

use crate::args::DescribeArgs;
use crate::client::Client;
use crate::cmd::{kind, now};
use crate::table;

pub fn run(client: &Client, ns_flag: Option<&str>, args: &DescribeArgs) -> Result<()> {
    let kind = kind(&args.kind)?;
    let ns = ns_flag.unwrap_or("default");
    let reply = client.get(&kind.path(Some(ns), Some(&args.name)))?;
    if reply.code == 404 {
        bail!("{} {:?} not found", kind.plural(), args.name);
    }
    let value = reply.ok()?.json()?;
    let obj = Object::from_value(value.clone()).map_err(anyhow::Error::msg)?;
    let m = obj.meta();
    let mut out = String::new();
    let field =
        |out: &mut String, k: &str, v: &str| out.push_str(&format!("{:<19}{v}\n", format!("{k}:")));
    field(&mut out, "Name", &m.name);
    if kind.namespaced() {
        field(&mut out, "Namespace", &m.namespace);
    }
    let pairs = |map: &std::collections::BTreeMap<String, String>| {
        if map.is_empty() {
            "<none>".to_string()
        } else {
            map.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("\n                   ")
        }
    };
    field(&mut out, "Labels", &pairs(&m.labels));
    // kubectl leaves the last-applied copy out: it repeats the object (a Secret's values too).
    let mut annotations = m.annotations.clone();
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    field(&mut out, "Annotations", &pairs(&annotations));
    field(
        &mut out,
        "CreationTimestamp",
        m.creation_timestamp.as_deref().unwrap_or("<unknown>"),
    );
    if let Some(d) = &m.deletion_timestamp {
        field(&mut out, "DeletionTimestamp", d);
    }
    if let Object::Pod(p) = &obj {
        field(
            &mut out,
            "Node",
            if p.spec.node_name.is_empty() {
                "<none>"
            } else {
                &p.spec.node_name
            },
        );
        field(&mut out, "Status", &table::pod_status(p));
    }
    match &obj {
        Object::ConfigMap(c) => {
            out.push_str("\nData\n====\n");
            for (k, v) in &c.data {
                out.push_str(&format!("{k}:\n----\n{v}\n\n"));
            }
            if !c.binary_data.is_empty() {
                out.push_str("\nBinaryData\n====\n");
                for (k, v) in &c.binary_data {
                    let n = bramble_api::config::decode(v).map_or(0, |b| b.len());
                    out.push_str(&format!("{k}: {n} bytes\n"));
                }
            }
        }
        Object::Secret(sec) => {
            // Never the values: their sizes, as kubectl prints them.
            field(&mut out, "Type", &sec.type_);
            out.push_str("\nData\n====\n");
            for (k, v) in sec.entries() {
                out.push_str(&format!("{k}:  {} bytes\n", v.len()));
            }
        }
        _ => {}
    }
    for section in ["spec", "status", "subsets"] {
        if let Some(v) = value.get(section).filter(|v| !v.is_null()) {
            let mut head = section.to_string();
            head[..1].make_ascii_uppercase();
            out.push_str(&format!("{head}:\n"));
            for line in serde_norway::to_string(v)?.lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
    }
    out.push_str("Events:");
    let events = events_for(client, &obj)?;
    if events.is_empty() {
        out.push_str("  <none>\n");
    } else {
        out.push('\n');
        let now = now();
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                let mut r = table::row(&Object::Event(e.clone()), false, false, now);
                r.remove(3); // OBJECT: it is this one
                r
            })
            .collect();
        for line in table::print(Some(&["LAST SEEN", "TYPE", "REASON", "MESSAGE"]), &rows).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    print!("{out}");
    Ok(())
}

fn events_for(client: &Client, obj: &Object) -> Result<Vec<Event>> {
    let m = obj.meta();
    let ns = if obj.kind().namespaced() {
        m.namespace.as_str()
    } else {
        "default"
    };
    let list = client
        .get(&Kind::Event.path(Some(ns), None))?
        .ok()?
        .json()?;
    let mut out = Vec::new();
    if let Some(Value::Array(items)) = list.get("items") {
        for item in items {
            if let Ok(Object::Event(e)) = Object::from_value(item.clone()) {
                let o = &e.involved_object;
                if o.kind == obj.kind().name()
                    && o.name == m.name
                    && (o.uid.is_empty() || o.uid == m.uid)
                {
                    out.push(e);
                }
            }
        }
    }
    Ok(out)
}
