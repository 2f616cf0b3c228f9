//! `bramble delete KIND NAME...` and `bramble delete -f FILE`.

use anyhow::{Result, bail};
use bramble_api::Kind;
use serde_json::json;

use crate::args::DeleteArgs;
use crate::client::Client;
use crate::cmd::{kind, place};
use crate::manifests;

pub fn run(client: &Client, ns_flag: Option<&str>, args: &DeleteArgs) -> Result<()> {
    let mut targets: Vec<(Kind, String, String)> = Vec::new();
    if !args.files.is_empty() {
        if args.kind.is_some() {
            bail!("give either -f FILE or KIND NAME, not both");
        }
        for d in manifests::load(&args.files, false)? {
            let mut obj = d.object;
            place(&mut obj, ns_flag)?;
            let m = obj.meta();
            targets.push((obj.kind(), m.namespace.clone(), m.name.clone()));
        }
        // Objects before the namespaces that hold them.
        targets.sort_by_key(|t| t.0 == Kind::Namespace);
    } else {
        let Some(k) = &args.kind else {
            bail!("name a kind and objects (bramble delete pod web), or use -f FILE")
        };
        let kind = kind(k)?;
        if args.names.is_empty() {
            bail!(
                "name the {} to delete (bramble delete {} NAME)",
                kind.plural(),
                kind.singular()
            );
        }
        let ns = ns_flag.unwrap_or("default").to_string();
        targets.extend(args.names.iter().map(|n| (kind, ns.clone(), n.clone())));
    }
    let grace = if args.force {
        Some(0)
    } else {
        args.grace_period
    };
    if grace.is_some_and(|g| g < 0) {
        bail!("--grace-period must be >= 0");
    }
    let options = match grace {
        Some(g) => json!({"gracePeriodSeconds": g}),
        None => json!({}),
    };
    let mut failed = 0;
    for (kind, ns, name) in targets {
        let reply = client.delete(&kind.path(Some(&ns), Some(&name)), &options)?;
        match reply.code {
            200 | 202 => println!("{} {name:?} deleted", kind.singular()),
            404 if args.ignore_not_found => {}
            _ => {
                eprintln!("Error from server: {}", reply.error_message());
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} object(s) could not be deleted");
    }
    Ok(())
}
