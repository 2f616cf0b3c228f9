//! `bramble get`: tables, YAML, JSON or names; `-w` follows changes.

use anyhow::{Result, bail};
use bramble_api::{Kind, Object};
use serde_json::Value;

use crate::args::{GetArgs, Output};
use crate::client::Client;
use crate::cmd::{encode, kind, now};
use crate::table;

pub fn run(client: &Client, ns_flag: Option<&str>, args: &GetArgs) -> Result<()> {
    let kinds = kinds(&args.kind)?;
    if kinds.len() > 1 && (args.watch || !args.names.is_empty()) {
        bail!("name one kind to watch or to get objects by name");
    }
    let mut missing = 0;
    let mut printed = false;
    for (i, kind) in kinds.iter().enumerate() {
        if i > 0 && printed && args.output.is_none_or(|o| o == Output::Wide) {
            println!();
        }
        let (shown, m) = run_kind(client, ns_flag, args, *kind, kinds.len() > 1)?;
        printed = shown;
        missing += m;
    }
    if missing > 0 {
        bail!("{missing} object(s) not found");
    }
    Ok(())
}

/// `pods`, `deploy,svc` or `all` (pods, services and deployments, as in kubectl).
fn kinds(text: &str) -> Result<Vec<Kind>> {
    if text == "all" {
        return Ok(vec![Kind::Pod, Kind::Service, Kind::Deployment]);
    }
    text.split(',').map(kind).collect()
}

/// Shows one kind; returns whether anything was printed and how many names were missing.
fn run_kind(
    client: &Client,
    ns_flag: Option<&str>,
    args: &GetArgs,
    kind: Kind,
    several: bool,
) -> Result<(bool, usize)> {
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
        revision = list
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Some(Value::Array(items)) = list.get("items") {
            objects.extend(items.iter().cloned());
        }
    } else {
        for name in &args.names {
            let reply = client.get(&kind.path(path_ns, Some(name)))?;
            if reply.code == 404 {
                eprintln!(
                    "Error from server (NotFound): {} {name:?} not found",
                    kind.plural()
                );
                missing += 1;
                continue;
            }
            objects.push(reply.ok()?.json()?);
        }
    }
    let single = args.names.len() == 1;
    let view = View {
        kind,
        all_ns,
        single,
        several,
    };
    print_objects(&view, &objects, args, true)?;
    if objects.is_empty() && args.names.is_empty() && args.output.is_none() && !several {
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
        let view = View {
            single: true,
            ..view
        };
        client.watch(&path, |_type, obj| {
            if args.names.is_empty()
                || args
                    .names
                    .iter()
                    .any(|n| obj.pointer("/metadata/name").and_then(Value::as_str) == Some(n))
            {
                print_objects(&view, &[obj], args, false)?;
            }
            Ok(true)
        })?;
    }
    Ok((!objects.is_empty(), missing))
}

/// How a batch of objects of one kind is shown.
#[derive(Clone, Copy)]
struct View {
    kind: Kind,
    all_ns: bool,
    /// One object by name: JSON and YAML show it bare, not in a List.
    single: bool,
    /// Several kinds in one table run: names carry their kind (`deployment.apps/web`).
    several: bool,
}

fn print_objects(view: &View, objects: &[Value], args: &GetArgs, header: bool) -> Result<()> {
    let View {
        kind,
        all_ns,
        single,
        several,
    } = *view;
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
                let name = o
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
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
                let mut r = table::row(&obj, wide, all_ns, now);
                if several && kind != Kind::Event {
                    let at = usize::from(all_ns && kind.namespaced());
                    r[at] = format!("{}/{}", kind.qualified(), r[at]);
                }
                rows.push(r);
            }
            let h = table::headers(kind, wide, all_ns);
            let show_header = header && !args.no_headers;
            print!("{}", table::print(show_header.then_some(&h[..]), &rows));
        }
    }
    Ok(())
}
