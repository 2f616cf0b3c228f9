//! Tier-B fleets: real aarch64 kernels. Each board is `qemu-system-aarch64 -M virt -cpu
//! cortex-a72` with 512 MiB, booting Debian's arm64 cloud kernel with an initramfs this
//! harness builds (busybox for arm64, the virtio and overlay modules, the cross-compiled
//! agent, an init that mounts what the agent needs and starts it), on a tap device on a test
//! LAN. The kernel comes from `tests/fleet/tier-b-setup` (run by `scripts/setup`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::eventually;
use crate::netlab::{Lan, in_netns};

/// Where tier-b-setup puts the kernel (`vmlinuz`) and its modules (`modules/<version>/`).
pub const ASSETS: &str = "/opt/bramble-test/tierb";

/// The modules the boards load, each after what it depends on.
const MODULES: &[&str] = &["virtio_pci", "virtio_net", "overlay"];

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Every `.ko` under `dir`, by module name (`-` and `_` are the same).
fn index_modules(dir: &Path, out: &mut std::collections::HashMap<String, PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            index_modules(&p, out);
        } else if let Some(n) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
        {
            out.insert(n.replace('-', "_"), p);
        }
    }
}

/// The `depends=` of a module file's `.modinfo`.
fn depends(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let key = b"depends=";
    let Some(at) = bytes.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &bytes[at + key.len()..];
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// The modules to load, dependencies first.
fn module_order(
    all: &std::collections::HashMap<String, PathBuf>,
    want: &[&str],
) -> Result<Vec<(String, PathBuf)>> {
    fn visit(
        m: &str,
        all: &std::collections::HashMap<String, PathBuf>,
        out: &mut Vec<(String, PathBuf)>,
    ) -> Result<()> {
        if out.iter().any(|(n, _)| n == m) {
            return Ok(());
        }
        let p = all
            .get(m)
            .with_context(|| format!("module {m} is not in the kernel package"))?;
        for d in depends(p) {
            visit(&d, all, out)?;
        }
        out.push((m.to_string(), p.clone()));
        Ok(())
    }
    let mut out = Vec::new();
    for m in want {
        visit(m, all, &mut out)?;
    }
    Ok(out)
}

const INIT: &str = r#"#!/bin/busybox sh
# The initramfs is the kernel's rootfs, which pivot_root (and so libcontainer) cannot leave:
# move everything to a tmpfs and make that the root, as a disk root would be.
if [ "$1" != stage2 ]; then
  /bin/busybox mkdir -p /newroot
  /bin/busybox mount -t tmpfs -o size=448m root /newroot
  /bin/busybox cp -a /bin /modules /init /etc /newroot/
  /bin/busybox mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/tmp /newroot/run /newroot/var/lib/bramble
  exec /bin/busybox switch_root /newroot /init stage2
fi
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup
for m in $(cat /modules/order); do insmod /modules/$m.ko; done
for w in $(cat /proc/cmdline); do
  case "$w" in
    bramble.*=*) k=${w%%=*}; k=${k#bramble.}; eval "B_$k=\"${w#*=}\"" ;;
  esac
done
hostname "$B_name"
ip link set lo up
ip addr add "$B_ip" dev eth0
ip link set eth0 up
echo "bramble-vm: $B_name up at $B_ip"
exec /bin/bramble-agent --data-dir /var/lib/bramble --server "$B_server" --token "$B_token" --no-pod-network --restart-backoff 1s --restart-backoff-max 5s
"#;

/// Builds the boards' initramfs in `work`; returns (kernel, initramfs).
pub fn build_boot(work: &Path, agent: &Path) -> Result<(PathBuf, PathBuf)> {
    let kernel = Path::new(ASSETS).join("vmlinuz");
    if !kernel.exists() {
        bail!(
            "{} is missing: run tests/fleet/tier-b-setup (scripts/setup does)",
            kernel.display()
        );
    }
    let busybox = Path::new(crate::oci::ARM64_BUSYBOX);
    if !busybox.exists() {
        bail!("{} is missing: run scripts/setup", busybox.display());
    }
    let root = work.join("initramfs");
    for d in [
        "bin",
        "modules",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "etc",
        "var/lib/bramble",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox"))?;
    std::fs::copy(agent, root.join("bin/bramble-agent"))?;
    let mut all = std::collections::HashMap::new();
    index_modules(&Path::new(ASSETS).join("modules"), &mut all);
    let mut order = String::new();
    for (name, path) in module_order(&all, MODULES)? {
        std::fs::copy(&path, root.join("modules").join(format!("{name}.ko")))?;
        order.push_str(&name);
        order.push('\n');
    }
    std::fs::write(root.join("modules/order"), order)?;
    std::fs::write(root.join("init"), INIT)?;
    std::fs::set_permissions(
        root.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let initrd = work.join("initrd.gz");
    run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > {}",
        root.display(),
        initrd.display()
    )))?;
    Ok((kernel, initrd))
}

/// One VM board.
pub struct Vm {
    pub name: String,
    pub ip: String,
    pub console: PathBuf,
    child: Child,
}

impl Vm {
    /// Boots a board on `lan` as `<lan prefix>.<n>`, joining `server` with `token`.
    pub fn boot(
        lan: &Lan,
        n: u8,
        boot: &(PathBuf, PathBuf),
        server: &str,
        token: &str,
        work: &Path,
    ) -> Result<Vm> {
        let name = format!("vm-{n}");
        let ip = format!("{}.{}", lan.prefix(), 100 + n);
        let tap = format!("tb{n}");
        let console = work.join(format!("{name}.console"));
        let append = format!(
            "console=ttyAMA0 panic=-1 bramble.name={name} bramble.ip={ip}/24 bramble.server={server} bramble.token={token}"
        );
        let mut cmd = Command::new("qemu-system-aarch64");
        cmd.args(["-M", "virt", "-cpu", "cortex-a72", "-m", "512", "-smp", "1"])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(&boot.0)
            .arg("-initrd")
            .arg(&boot.1)
            .args(["-append", &append])
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
                "-device",
                &format!("virtio-net-pci,netdev=n0,romfile=,mac=52:54:00:00:00:{n:02x}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // qemu opens the tap in the LAN's namespace, where the bridge is.
        let lan_ns = lan.lan_path();
        let child =
            in_netns(&lan_ns, move || cmd.spawn()).context("starting qemu-system-aarch64")?;
        let ok = eventually(Duration::from_secs(10), || {
            lan.run_in_lan(&["link", "set", &tap, "master", "lan0", "up"])
                .is_ok()
        });
        if !ok {
            bail!("the tap {tap} of {name} never appeared");
        }
        Ok(Vm {
            name,
            ip,
            console,
            child,
        })
    }

    /// The host process's resident memory in KiB.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
