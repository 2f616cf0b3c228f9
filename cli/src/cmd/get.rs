//! `bramble get`: tables, YAML, JSON or names; `-w` follows changes.

use anyhow::{Result, bail};
use bramble_api::{Kind, Object};
use serde_json::Value;

use crate::args::{GetArgs, Output};
use crate::client::Client;
use crate::cmd::{encode, kind, now};
use crate::table;

pub fn run(client: &Client, ns_flag: Option<&str>, args: &GetArgs) -> Result<()> {
    let kind = kind(&args.kind)?;
    let all_ns = args.all_namespaces && kind.namespaced();
    let ns = ns_flag.unwrap_or("default");
    let path_ns = if all_ns { None } else { Some(ns) };
    let mut objects: Vec<Value> = Vec::new();
    let mut missing = 0;
    let mut revision = String::new();
    if args.names.is_empty() {
        let mut path = kind.path(path_ns, None);
        if let Some(sel) = &args.selector {
            path.push_str(&format!("?labelSelector={}", encode(sel)));
        }
        let list = client.get(&path)?.ok()?.json()?;
        revision = list.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("").to_string();
        if let Some(Value::Array(items)) = list.get("items") {
            objects.extend(items.iter().cloned());
        }
    } else {
        for name in &args.names {
            let reply = client.get(&kind.path(path_ns, Some(name)))?;
            if reply.code == 404 {
                eprintln!("Error from server (NotFound): {} {name:?} not found", kind.plural());
                missing += 1;
                continue;
            }
            objects.push(reply.ok()?.json()?);
        }
    }
    let single = !args.names.is_empty() && args.names.len() == 1;
    print_objects(kind, &objects, args, all_ns, single, true)?;
    if objects.is_empty() && args.names.is_empty() && args.output.is_none() {
        match (kind.namespaced(), all_ns) {
            (true, false) => eprintln!("No resources found in {ns} namespace."),
            _ => eprintln!("No resources found"),
        }
    }
    if args.watch {
        let mut path = kind.path(path_ns, None);
        path.push_str(&format!("?watch=true&resourceVersion={revision}"));
        if let Some(sel) = &args.selector {
            path.push_str(&format!("&labelSelector={}", encode(sel)));
        }
        client.watch(&path, |_type, obj| {
            if args.names.is_empty() || args.names.iter().any(|n| obj.pointer("/metadata/name").and_then(Value::as_str) == Some(n)) {
                print_objects(kind, &[obj], args, all_ns, true, false)?;
            }
            Ok(true)
        })?;
    }
    if missing > 0 {
        bail!("{missing} object(s) not found");
    }
    Ok(())
}

fn print_objects(kind: Kind, objects: &[Value], args: &GetArgs, all_ns: bool, single: bool, header: bool) -> Result<()> {
    match args.output {
        Some(Output::Json) => {
            let v = if single {
                objects.first().cloned().unwrap_or(Value::Null)
            } else {
                serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects})
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Some(Output::Yaml) => {
            let v = if single {
                objects.first().cloned().unwrap_or(Value::Null)
            } else {
                serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects})
            };
            if args.watch && !header {
                println!("---");
            }
            print!("{}", serde_norway::to_string(&v)?);
        }
        Some(Output::Name) => {
            for o in objects {
                let name = o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
                println!("{}/{name}", kind.qualified());
            }
        }
        Some(Output::Wide) | None => {
            if objects.is_empty() {
                return Ok(());
            }
            let wide = args.output == Some(Output::Wide);
            let now = now();
            let mut rows = Vec::new();
            for o in objects {
                let obj = Object::from_value(o.clone()).map_err(anyhow::Error::msg)?;
                rows.push(table::row(&obj, wide, all_ns, now));
            }
            let h = table::headers(kind, wide, all_ns);
            let show_header = header && !args.no_headers;
            print!("{}", table::print(show_header.then_some(&h[..]), &rows));
        }
    }
    Ok(())
}
