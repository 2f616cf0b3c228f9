//! `bramble create configmap|secret`: a ConfigMap or Secret from literals, files and env
//! files, as `kubectl create` makes them; `bramble secrets rotate-key`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use bramble_api::config::{ConfigMap, Secret};
use bramble_api::{Kind, Object};

use crate::args::{ConfigSources, CreateCommand, SecretKind, SecretsCommand};
use crate::client::Client;
use crate::cmd::place;

/// A key read from a file or a directory's file.
fn add(
    keys: &mut BTreeMap<String, Vec<u8>>,
    key: String,
    value: Vec<u8>,
    from: &str,
) -> Result<()> {
    if let Err(why) = bramble_api::config::check_key(&key) {
        bail!("{from}: {why}");
    }
    if keys.insert(key.clone(), value).is_some() {
        bail!("{from}: the key {key:?} is given twice");
    }
    Ok(())
}

/// The keys and bytes the flags name.
pub fn gather(s: &ConfigSources) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut keys = BTreeMap::new();
    for l in &s.literals {
        let Some((k, v)) = l.split_once('=') else {
            bail!("--from-literal {l:?}: expected KEY=VALUE");
        };
        add(
            &mut keys,
            k.to_string(),
            v.as_bytes().to_vec(),
            "--from-literal",
        )?;
    }
    for f in &s.files {
        let (key, path) = match f.split_once('=') {
            Some((k, p)) => (Some(k.to_string()), p),
            None => (None, f.as_str()),
        };
        let path = Path::new(path);
        if path.is_dir() {
            if key.is_some() {
                bail!("--from-file {f}: a directory cannot be given a key");
            }
            let mut entries: Vec<_> = std::fs::read_dir(path)
                .with_context(|| format!("--from-file {}", path.display()))?
                .flatten()
                .filter(|e| e.path().is_file())
                .collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let name = e.file_name().to_string_lossy().into_owned();
                let bytes = std::fs::read(e.path())
                    .with_context(|| format!("--from-file {}", e.path().display()))?;
                add(&mut keys, name, bytes, "--from-file")?;
            }
            continue;
        }
        let bytes =
            std::fs::read(path).with_context(|| format!("--from-file {}", path.display()))?;
        let key = key.unwrap_or_else(|| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        add(&mut keys, key, bytes, "--from-file")?;
    }
    for p in &s.env_files {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("--from-env-file {}", p.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                bail!(
                    "--from-env-file {}:{}: expected KEY=VALUE",
                    p.display(),
                    n + 1
                );
            };
            add(
                &mut keys,
                k.trim().to_string(),
                v.as_bytes().to_vec(),
                "--from-env-file",
            )?;
        }
    }
    Ok(keys)
}

/// A ConfigMap of the keys: UTF-8 values in `data`, the others in `binaryData`.
pub fn configmap(name: &str, keys: BTreeMap<String, Vec<u8>>) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = name.to_string();
    for (k, v) in keys {
        match String::from_utf8(v) {
            Ok(text) => {
                c.data.insert(k, text);
            }
            Err(e) => {
                c.binary_data
                    .insert(k, bramble_api::config::encode(e.as_bytes()));
            }
        }
    }
    c
}

/// A Secret of the keys.
pub fn secret(name: &str, type_: &str, keys: BTreeMap<String, Vec<u8>>) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = name.to_string();
    s.type_ = type_.to_string();
    s.data = keys
        .into_iter()
        .map(|(k, v)| (k, bramble_api::config::encode(&v)))
        .collect();
    s
}

/// `create job NAME --from cronjob/CJ`: the CronJob's Job template as a Job, now (as
/// kubectl does: annotated as a manual run, owned by the CronJob).
fn job_from_cronjob(client: &Client, ns: &str, name: &str, from: &str) -> Result<Object> {
    let cj_name = match from.split_once('/') {
        Some((k, n)) if Kind::from_user(k) == Some(Kind::CronJob) => n,
        _ => bail!("--from {from:?}: expected cronjob/NAME"),
    };
    let reply = client.get(&Kind::CronJob.path(Some(ns), Some(cj_name)))?;
    if reply.code == 404 {
        bail!("cronjobs {cj_name:?} not found");
    }
    let Object::CronJob(cj) =
        Object::from_value(reply.ok()?.json()?).map_err(anyhow::Error::msg)?
    else {
        bail!("{cj_name:?} is not a CronJob");
    };
    let mut job = bramble_api::job::Job {
        metadata: cj.spec.job_template.metadata.clone(),
        spec: cj.spec.job_template.spec.clone(),
        ..Default::default()
    };
    job.metadata.name = name.to_string();
    job.metadata.namespace = ns.to_string();
    job.metadata
        .annotations
        .insert("cronjob.kubernetes.io/instantiate".into(), "manual".into());
    job.metadata.owner_references = vec![bramble_api::meta::OwnerReference::controller(
        Kind::CronJob,
        &cj.metadata,
    )];
    Ok(Object::Job(job))
}

pub fn run(client: &Client, ns_flag: Option<&str>, cmd: &CreateCommand) -> Result<()> {
    let mut obj = match cmd {
        CreateCommand::Job { name, from } => {
            job_from_cronjob(client, ns_flag.unwrap_or("default"), name, from)?
        }
        CreateCommand::Configmap(s) => Object::ConfigMap(configmap(&s.name, gather(s)?)),
        CreateCommand::Secret(SecretKind::Generic { sources, type_ }) => Object::Secret(secret(
            &sources.name,
            type_.as_deref().unwrap_or("Opaque"),
            gather(sources)?,
        )),
        CreateCommand::Secret(SecretKind::Tls { name, cert, key }) => {
            let read = |p: &Path, flag: &str| {
                std::fs::read(p).with_context(|| format!("--{flag} {}", p.display()))
            };
            let keys = BTreeMap::from([
                ("tls.crt".to_string(), read(cert, "cert")?),
                ("tls.key".to_string(), read(key, "key")?),
            ]);
            Object::Secret(secret(name, "kubernetes.io/tls", keys))
        }
    };
    obj.normalize_type_meta();
    place(&mut obj, ns_flag)?;
    let errors = bramble_api::validate::validate(&obj);
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        bail!("{}: {}", obj.describe(), list.join("; "));
    }
    let kind = obj.kind();
    let m = obj.meta();
    let path = kind.path(Some(&m.namespace), None);
    client.post_json(&path, &obj.to_value())?.ok()?;
    println!("{}/{} created", kind.singular(), m.name);
    Ok(())
}

pub fn secrets(client: &Client, cmd: &SecretsCommand) -> Result<()> {
    match cmd {
        SecretsCommand::RotateKey => {
            let v = client
                .post_json("/bramble/v1/secrets/rotate-key", &serde_json::json!({}))?
                .ok()?
                .json()?;
            println!(
                "secrets key rotated: {} Secret(s) sealed with the new key; the old key is gone",
                v["resealed"].as_u64().unwrap_or(0)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_literals_files_directories_and_env_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("game.properties"), "lives=3\n").unwrap();
        std::fs::create_dir(d.join("conf")).unwrap();
        std::fs::write(d.join("conf/a.txt"), "A").unwrap();
        std::fs::write(d.join("conf/bin"), [0xff, 0x00]).unwrap();
        std::fs::write(
            d.join("app.env"),
            "# comment\n\nMODE=prod\nURL=http://x/?a=b\n",
        )
        .unwrap();
        let s = ConfigSources {
            name: "c".into(),
            literals: vec!["k=v=w".into()],
            files: vec![
                d.join("game.properties").display().to_string(),
                format!("renamed={}", d.join("game.properties").display()),
                d.join("conf").display().to_string(),
            ],
            env_files: vec![d.join("app.env")],
        };
        let keys = gather(&s).unwrap();
        let names: Vec<&str> = keys.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "MODE",
                "URL",
                "a.txt",
                "bin",
                "game.properties",
                "k",
                "renamed"
            ]
        );
        assert_eq!(keys["k"], b"v=w");
        assert_eq!(keys["URL"], b"http://x/?a=b");
        let c = configmap("c", keys.clone());
        assert_eq!(c.data["a.txt"], "A");
        assert_eq!(c.binary_data["bin"], "/wA=");
        let sec = secret("s", "Opaque", keys);
        assert_eq!(sec.entries()["game.properties"], b"lives=3\n");
        // A key given twice, or not a file name, is refused by name.
        let twice = ConfigSources {
            name: "c".into(),
            literals: vec!["a=1".into(), "a=2".into()],
            files: vec![],
            env_files: vec![],
        };
        assert!(
            gather(&twice)
                .unwrap_err()
                .to_string()
                .contains("\"a\" is given twice")
        );
        let bad = ConfigSources {
            name: "c".into(),
            literals: vec!["a/b=1".into()],
            files: vec![],
            env_files: vec![],
        };
        assert!(
            gather(&bad)
                .unwrap_err()
                .to_string()
                .contains("not a valid key")
        );
    }
}
