//! Where a pod's files live on the node: `DATA_DIR/pods/UID/` holds its `emptyDir` volumes
//! (`volumes/NAME/`) and its containers' logs (`logs/CONTAINER/INSTANCE.log`, the rotated
//! part as `INSTANCE.log.1`), the current and the previous instance's kept.

use std::path::{Path, PathBuf};

use bramble_api::pod::{Pod, Volume};

/// A volume that could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {name:?}: {}: {source}", path.display())]
    Create {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("volume {name:?}: hostPath {} is not a directory", path.display())]
    NotADirectory { name: String, path: PathBuf },
}

/// What of the board itself pods may reach, beyond the API's rule (only admins create pods
/// with `hostPath` or `hostNetwork`): the board's own allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAccess {
    /// The directories `hostPath` volumes may name (at or below); None: any.
    pub host_paths: Option<Vec<PathBuf>>,
    /// Refuse `hostNetwork: true`.
    pub deny_host_network: bool,
}

impl HostAccess {
    /// Why this board refuses `pod`, if it does.
    pub fn refuse(&self, pod: &Pod) -> Option<String> {
        if self.deny_host_network && pod.spec.host_network {
            return Some("hostNetwork is not allowed on this board (--deny-host-network)".into());
        }
        let allowed = self.host_paths.as_ref()?;
        for v in &pod.spec.volumes {
            let Some(h) = &v.host_path else { continue };
            let raw = Path::new(&h.path);
            // Through symlinks, as the mount will follow them.
            let real = std::fs::canonicalize(raw).unwrap_or_else(|_| raw.to_path_buf());
            let inside = !raw
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
                && allowed.iter().any(|a| real.starts_with(a));
            if !inside {
                let list: Vec<String> = allowed.iter().map(|a| a.display().to_string()).collect();
                return Some(format!(
                    "volume {:?}: hostPath {} is not in this board's allow-list ({}; --host-path-allow)",
                    v.name,
                    real.display(),
                    if list.is_empty() {
                        "empty".to_string()
                    } else {
                        list.join(", ")
                    }
                ));
            }
        }
        None
    }
}

/// The pod directory tree under the agent's data directory.
#[derive(Debug, Clone)]
pub struct PodLayout {
    pods_dir: PathBuf,
}

impl PodLayout {
    pub fn new(data_dir: &Path) -> Self {
        PodLayout {
            pods_dir: data_dir.join("pods"),
        }
    }

    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid)
    }

    /// The log file of one container instance.
    pub fn log_file(&self, uid: &str, container: &str, instance: u32) -> PathBuf {
        self.pod_dir(uid)
            .join("logs")
            .join(container)
            .join(format!("{instance}.log"))
    }

    /// Before `instance` starts: removes the logs of instances older than the previous one.
    pub fn rotate_logs(&self, uid: &str, container: &str, instance: u32) {
        if instance < 2 {
            return;
        }
        let old = self.log_file(uid, container, instance - 2);
        let _ = std::fs::remove_file(old.with_extension("log.1"));
        let _ = std::fs::remove_file(old);
    }

    /// Writes a configMap/secret/projected/downwardAPI volume's files (atomically swapped);
    /// returns whether they changed.
    pub fn write_projected(
        &self,
        uid: &str,
        v: &Volume,
        files: &[super::config::VolumeFile],
        now_nanos: u128,
    ) -> std::io::Result<bool> {
        super::atomic::write(&self.volume_path(uid, v), files, now_nanos)
    }

    /// Where a volume is on the host.
    pub fn volume_path(&self, uid: &str, v: &Volume) -> PathBuf {
        match &v.host_path {
            Some(h) => PathBuf::from(&h.path),
            None => self.pod_dir(uid).join("volumes").join(&v.name),
        }
    }

    /// Makes the pod's `emptyDir` and `DirectoryOrCreate` volumes; checks `Directory` ones.
    pub fn prepare_volumes(&self, uid: &str, pod: &Pod) -> Result<(), VolumeError> {
        for v in &pod.spec.volumes {
            let path = self.volume_path(uid, v);
            let create = match &v.host_path {
                None => true,
                Some(h) if h.type_ == "DirectoryOrCreate" => true,
                Some(h) if h.type_ == "Directory" && !path.is_dir() => {
                    return Err(VolumeError::NotADirectory {
                        name: v.name.clone(),
                        path,
                    });
                }
                Some(_) => false,
            };
            if create {
                std::fs::create_dir_all(&path).map_err(|source| VolumeError::Create {
                    name: v.name.clone(),
                    path: path.clone(),
                    source,
                })?;
            }
            let fs_group = pod
                .spec
                .security_context
                .as_ref()
                .and_then(|s| s.fs_group)
                .and_then(|g| u32::try_from(g).ok());
            let memory =
                v.is_projected() || v.empty_dir.as_ref().is_some_and(|e| e.medium == "Memory");
            if memory && !crate::runtime::sandbox::is_mount_point(&path) {
                // tmpfs, never the SD card (ConfigMaps' and Secrets' files always); its size
                // is the sizeLimit (tmpfs's own default, half the board's memory, without
                // one). Memory used there counts against the board, as the kubelet's does.
                let mut options = if v.is_projected() {
                    "mode=0755".to_string()
                } else {
                    "mode=0777".to_string()
                };
                if let Some(q) = v.empty_dir.as_ref().and_then(|e| e.size_limit.as_ref()) {
                    options.push_str(&format!(",size={}", q.value().max(4096)));
                }
                nix::mount::mount(
                    Some("tmpfs"),
                    &path,
                    Some("tmpfs"),
                    nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                    Some(options.as_str()),
                )
                .map_err(|e| VolumeError::Create {
                    name: v.name.clone(),
                    path: path.clone(),
                    source: e.into(),
                })?;
            }
            if v.empty_dir.is_some() {
                // Writable by every user of the pod, as the kubelet makes it; with an
                // fsGroup, the group's, and what is made in it too (setgid).
                use std::os::unix::fs::PermissionsExt;
                let io = |source| VolumeError::Create {
                    name: v.name.clone(),
                    path: path.clone(),
                    source,
                };
                let mode = match fs_group {
                    Some(g) => {
                        std::os::unix::fs::chown(&path, None, Some(g)).map_err(io)?;
                        0o2777
                    }
                    None => 0o777,
                };
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(io)?;
            }
        }
        Ok(())
    }

    /// Removes everything the pod left on the node (volumes, logs); its memory-backed
    /// volumes are unmounted first.
    pub fn remove_pod(&self, uid: &str) {
        let dir = self.pod_dir(uid);
        if let Ok(rd) = std::fs::read_dir(dir.join("volumes")) {
            for e in rd.flatten() {
                let p = e.path();
                if crate::runtime::sandbox::is_mount_point(&p)
                    && let Err(err) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH)
                {
                    tracing::warn!(path = %p.display(), error = %err, "cannot unmount a pod volume");
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the pod directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"containers": [{"name": "c", "image": "i"}], "volumes": volumes}
        }))
        .unwrap()
    }

    #[test]
    fn the_board_s_allow_list_bounds_host_paths_and_host_network() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc", data.join("escape")).unwrap();
        let vols = |p: &str| pod(serde_json::json!([{"name": "h", "hostPath": {"path": p}}]));
        let open = HostAccess::default();
        assert_eq!(open.refuse(&vols("/etc")), None, "no list: any path");
        let board = HostAccess {
            host_paths: Some(vec![data.clone()]),
            deny_host_network: true,
        };
        let d = data.display().to_string();
        assert_eq!(board.refuse(&vols(&d)), None);
        assert_eq!(board.refuse(&vols(&format!("{d}/sub"))), None);
        assert_eq!(board.refuse(&vols(&format!("{d}/not-yet/made"))), None);
        for bad in [
            "/etc".to_string(),
            format!("{d}/escape"),
            format!("{d}/../x"),
            format!("{d}x"),
        ] {
            let why = board
                .refuse(&vols(&bad))
                .unwrap_or_else(|| panic!("{bad} allowed"));
            assert!(why.contains("allow-list"), "{why}");
        }
        let mut net = pod(serde_json::json!([]));
        net.spec.host_network = true;
        assert!(board.refuse(&net).unwrap().contains("hostNetwork"));
        assert_eq!(open.refuse(&net), None);
    }

    #[test]
    fn logs_keep_the_current_and_the_previous_instance() {
        let dir = tempfile::tempdir().unwrap();
        let l = PodLayout::new(dir.path());
        assert_eq!(
            l.log_file("u", "c", 3),
            dir.path().join("pods/u/logs/c/3.log")
        );
        for i in 0..2 {
            let f = l.log_file("u", "c", i);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, "x").unwrap();
            std::fs::write(f.with_extension("log.1"), "x").unwrap();
        }
        l.rotate_logs("u", "c", 1);
        assert!(
            l.log_file("u", "c", 0).exists(),
            "instance 1 keeps 0 as previous"
        );
        l.rotate_logs("u", "c", 2);
        assert!(!l.log_file("u", "c", 0).exists());
        assert!(!l.log_file("u", "c", 0).with_extension("log.1").exists());
        assert!(l.log_file("u", "c", 1).exists());
        assert!(l.log_file("u", "c", 1).with_extension("log.1").exists());
    }

    #[test]
    fn volumes_are_made_or_checked_and_removed_with_the_pod() {
        let dir = tempfile::tempdir().unwrap();
        let l = PodLayout::new(dir.path());
        let made = dir.path().join("host/made");
        let p = pod(serde_json::json!([
            {"name": "scratch", "emptyDir": {}},
            {"name": "h", "hostPath": {"path": made, "type": "DirectoryOrCreate"}}
        ]));
        l.prepare_volumes("u", &p).unwrap();
        assert!(dir.path().join("pods/u/volumes/scratch").is_dir());
        assert!(made.is_dir());
        let missing = pod(serde_json::json!([
            {"name": "h", "hostPath": {"path": dir.path().join("nope"), "type": "Directory"}}
        ]));
        let e = l.prepare_volumes("u", &missing).unwrap_err();
        assert!(
            matches!(&e, VolumeError::NotADirectory { name, .. } if name == "h"),
            "{e}"
        );
        assert!(e.to_string().contains("is not a directory"), "{e}");
        l.remove_pod("u");
        assert!(!l.pod_dir("u").exists());
        assert!(made.is_dir(), "a hostPath is the host's, not the pod's");
        l.remove_pod("u");
    }
}
