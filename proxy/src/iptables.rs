//! Applying a ruleset: the iptables backend the host uses, `iptables-restore --noflush` of
//! Bramble's chains, the jump rules into them, and clean removal.
//!
//! Mixing the nf_tables and legacy backends silently breaks service routing (Raspberry Pi OS
//! and Ubuntu have both binaries), so the proxy uses the backend that already holds rules,
//! as kube-proxy does, and says which in the log.

use std::io::Write;
use std::process::{Command, Stdio};

/// An iptables backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    /// The command prefix: `iptables-nft` or `iptables-legacy`.
    pub fn prefix(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft",
            Backend::Legacy => "iptables-legacy",
        }
    }
}

/// Why an iptables operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("running {cmd}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("neither iptables-nft nor iptables-legacy is installed (apt-get install iptables)")]
    Missing,
}

/// The backend to use given how many rules each holds (None: not installed): the one with
/// rules; nft when both or neither have any (the default of current distributions).
pub fn choose(nft_rules: Option<usize>, legacy_rules: Option<usize>) -> Option<Backend> {
    match (nft_rules, legacy_rules) {
        (None, None) => None,
        (Some(_), None) => Some(Backend::Nft),
        (None, Some(_)) => Some(Backend::Legacy),
        (Some(n), Some(l)) if l > n => Some(Backend::Legacy),
        (Some(_), Some(_)) => Some(Backend::Nft),
    }
}

fn run(cmd: &str, args: &[&str], input: Option<&str>) -> Result<String, IptablesError> {
    let shown = format!("{cmd} {}", args.join(" "));
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| IptablesError::Spawn {
            cmd: shown.clone(),
            source,
        })?;
    if let Some(stdin) = child.stdin.as_mut() {
        let _ = stdin.write_all(input.unwrap_or("").as_bytes());
    }
    drop(child.stdin.take());
    let out = child
        .wait_with_output()
        .map_err(|source| IptablesError::Spawn {
            cmd: shown.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(IptablesError::Failed {
            cmd: shown,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Rules in a backend's tables, None if it is not installed.
fn rule_count(b: Backend) -> Option<usize> {
    let out = run(&format!("{}-save", b.prefix()), &[], None).ok()?;
    Some(out.lines().filter(|l| l.starts_with("-A ")).count())
}

/// Detects the backend the host uses.
pub fn detect() -> Result<Backend, IptablesError> {
    let (n, l) = (rule_count(Backend::Nft), rule_count(Backend::Legacy));
    let b = choose(n, l).ok_or(IptablesError::Missing)?;
    tracing::info!(
        backend = b.prefix(),
        nft_rules = n.unwrap_or(0),
        legacy_rules = l.unwrap_or(0),
        "iptables backend chosen"
    );
    Ok(b)
}

/// Bramble's chains that exist now in the nat and filter tables.
pub fn existing_chains(b: Backend) -> Result<Vec<String>, IptablesError> {
    let mut out = Vec::new();
    for table in ["nat", "filter"] {
        let text = run(&format!("{}-save", b.prefix()), &["-t", table], None)?;
        out.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix(':'))
                .filter_map(|l| l.split(' ').next())
                .filter(|c| c.starts_with("BRAMBLE-"))
                .map(str::to_string),
        );
    }
    Ok(out)
}

/// The jumps from the built-in chains into Bramble's: (table, chain, target).
pub const JUMPS: &[(&str, &str, &str)] = &[
    ("nat", "PREROUTING", crate::SERVICES),
    ("nat", "OUTPUT", crate::SERVICES),
    ("nat", "POSTROUTING", crate::POSTROUTING),
    ("filter", "INPUT", crate::NODEPORTS),
    // Each jump is inserted first in its chain: BRAMBLE-FORWARD's accepts go in before and
    // so end up after BRAMBLE-SERVICES' rejects.
    ("filter", "FORWARD", crate::FORWARD),
    ("filter", "FORWARD", crate::SERVICES),
    ("filter", "OUTPUT", crate::SERVICES),
];

/// What the kernel holds now: Bramble's chains with their rules, as `iptables-save` prints
/// them, and how many times each of [`JUMPS`] is present.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub rules: crate::Ruleset,
    pub jumps: Vec<usize>,
}

/// Parses `iptables-save` output (the nat and filter tables).
pub fn parse_live(text: &str) -> Live {
    let mut live = Live {
        rules: crate::Ruleset::default(),
        jumps: vec![0; JUMPS.len()],
    };
    // (table, chain) → index in that table's chain list.
    let mut index: std::collections::HashMap<(String, String), usize> =
        std::collections::HashMap::new();
    let mut table = "";
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t;
            continue;
        }
        let chains = match table {
            "nat" => &mut live.rules.nat,
            "filter" => &mut live.rules.filter,
            _ => continue,
        };
        let (name, rule) = if let Some(decl) = line.strip_prefix(':') {
            (decl.split(' ').next().unwrap_or(""), None)
        } else if let Some(rest) = line.strip_prefix("-A ") {
            (rest.split(' ').next().unwrap_or(""), Some(rest))
        } else {
            continue;
        };
        if name.starts_with("BRAMBLE-") {
            let i = *index
                .entry((table.to_string(), name.to_string()))
                .or_insert_with(|| {
                    chains.push((name.to_string(), Vec::new()));
                    chains.len() - 1
                });
            if rule.is_some() {
                chains[i].1.push(line.to_string());
            }
        } else if let Some(rest) = rule
            && let Some(i) = JUMPS
                .iter()
                .position(|(t, c, target)| *t == table && rest == format!("{c} -j {target}"))
        {
            live.jumps[i] += 1;
        }
    }
    live
}

/// Reads Bramble's chains and jumps from the kernel (one `iptables-save`).
pub fn read(b: Backend) -> Result<Live, IptablesError> {
    let text = run(&format!("{}-save", b.prefix()), &[], None)?;
    Ok(parse_live(&text))
}

/// Restores `ruleset` (`iptables-restore --noflush` input) atomically.
pub fn restore(b: Backend, ruleset: &str) -> Result<(), IptablesError> {
    run(
        &format!("{}-restore", b.prefix()),
        &["--noflush", "--wait"],
        Some(ruleset),
    )
    .map(|_| ())
}

/// Makes each jump of [`JUMPS`] present exactly once, in order, given how many times each is
/// there now: a built-in chain whose jumps are all right is not touched.
pub fn fix_jumps(b: Backend, counts: &[usize]) -> Result<(), IptablesError> {
    let ipt = b.prefix();
    let mut done: Vec<(&str, &str)> = Vec::new();
    for (i, (table, chain, _)) in JUMPS.iter().enumerate() {
        if counts.get(i) == Some(&1) || done.contains(&(table, chain)) {
            continue;
        }
        done.push((table, chain));
        // Remove every Bramble jump of this chain, then insert them in order.
        let mine: Vec<(usize, &str)> = JUMPS
            .iter()
            .enumerate()
            .filter(|(_, (t, c, _))| t == table && c == chain)
            .map(|(j, (_, _, target))| (j, *target))
            .collect();
        for (j, target) in &mine {
            for _ in 0..counts.get(*j).copied().unwrap_or(0) {
                run(ipt, &["-w", "-t", table, "-D", chain, "-j", target], None)?;
            }
        }
        for (_, target) in &mine {
            run(
                ipt,
                &["-w", "-t", table, "-I", chain, "1", "-j", target],
                None,
            )?;
        }
    }
    Ok(())
}

/// Applies a rendered ruleset atomically, then makes sure each jump exists exactly once.
pub fn apply(b: Backend, ruleset: &str) -> Result<(), IptablesError> {
    restore(b, ruleset)?;
    fix_jumps(b, &read(b)?.jumps)
}

/// Removes the jumps and every Bramble chain; rules Bramble does not own stay.
pub fn cleanup(b: Backend) -> Result<(), IptablesError> {
    let ipt = b.prefix();
    for (table, chain, target) in JUMPS {
        while run(ipt, &["-t", table, "-C", chain, "-j", target], None).is_ok() {
            run(ipt, &["-w", "-t", table, "-D", chain, "-j", target], None)?;
        }
    }
    for table in ["nat", "filter"] {
        let text = run(&format!("{ipt}-save"), &["-t", table], None)?;
        let chains: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split(' ').next())
            .filter(|c| c.starts_with("BRAMBLE-"))
            .collect();
        if chains.is_empty() {
            continue;
        }
        let mut input = format!("*{table}\n");
        for c in &chains {
            input.push_str(&format!(":{c} - [0:0]\n"));
        }
        for c in &chains {
            input.push_str(&format!("-X {c}\n"));
        }
        input.push_str("COMMIT\n");
        run(
            &format!("{ipt}-restore"),
            &["--noflush", "--wait"],
            Some(&input),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_with_rules_wins_and_nft_is_the_default() {
        assert_eq!(choose(Some(0), Some(12)), Some(Backend::Legacy));
        assert_eq!(choose(Some(30), Some(12)), Some(Backend::Nft));
        assert_eq!(choose(Some(0), Some(0)), Some(Backend::Nft));
        assert_eq!(choose(None, Some(0)), Some(Backend::Legacy));
        assert_eq!(choose(Some(0), None), Some(Backend::Nft));
        assert_eq!(choose(None, None), None);
    }
}
