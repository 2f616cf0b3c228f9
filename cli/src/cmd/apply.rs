//! `bramble apply -f`: validate every manifest locally, then create or update each object
//! through the server-side apply PATCH.

use anyhow::{Result, bail};
use bramble_api::Kind;

use crate::args::ApplyArgs;
use crate::client::Client;
use crate::cmd::place;
use crate::manifests;

pub fn run(client: &Client, ns_flag: Option<&str>, args: &ApplyArgs) -> Result<()> {
    let mut docs = manifests::load(&args.files, args.recursive)?;
    // Namespaces first, so that objects in a new namespace can be created in the same run.
    docs.sort_by_key(|d| d.object.kind() != Kind::Namespace);
    let mut failed = 0;
    for d in docs {
        let mut obj = d.object;
        for w in &d.warnings {
            eprintln!("Warning: {}: {w}", obj.describe());
        }
        if let Err(e) = place(&mut obj, ns_flag) {
            eprintln!("error: {e}");
            failed += 1;
            continue;
        }
        let kind = obj.kind();
        let m = obj.meta();
        let path = kind.path(Some(&m.namespace), Some(&m.name));
        let reply = client.apply(&path, &obj.to_json())?;
        for w in &reply.warnings {
            eprintln!("Warning: {w}");
        }
        let name = m.name.clone();
        match reply.ok() {
            Ok(r) => {
                let result = r.apply_result.unwrap_or_else(|| "configured".into());
                println!("{}/{name} {result}", kind.qualified());
            }
            Err(e) => {
                eprintln!("error: {}/{name}: {e}", kind.qualified());
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} object(s) could not be applied");
    }
    Ok(())
}
