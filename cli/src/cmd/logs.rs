//! `bramble logs POD [-c C] [-f] [--tail N] [--previous]`: through the master to the agent.

use std::io::Write;

use anyhow::Result;
use bramble_api::Kind;

use crate::args::LogsArgs;
use crate::client::Client;
use crate::cmd::encode;

pub fn run(client: &Client, ns_flag: Option<&str>, args: &LogsArgs) -> Result<()> {
    let ns = ns_flag.unwrap_or("default");
    let mut path = format!("{}/log?", Kind::Pod.path(Some(ns), Some(&args.pod)));
    if let Some(c) = &args.container {
        path.push_str(&format!("container={}&", encode(c)));
    }
    if let Some(n) = args.tail {
        path.push_str(&format!("tailLines={n}&"));
    }
    if args.previous {
        path.push_str("previous=true&");
    }
    if args.follow {
        path.push_str("follow=true&");
        return client.stream(&path, |chunk| {
            let mut out = std::io::stdout().lock();
            out.write_all(chunk)?;
            out.flush()?;
            Ok(())
        });
    }
    let reply = client.get(&path)?.ok()?;
    std::io::stdout().write_all(&reply.body)?;
    Ok(())
}
