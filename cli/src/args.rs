//! The `bramble` command line, in the spirit of kubectl.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

/// bramble: the command-line client of a Bramble cluster.
#[derive(Debug, Parser)]
#[command(name = "bramble", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub conn: Connection,
    /// Namespace for namespaced objects [default: from the manifest, else "default"]
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the master is and how to authenticate.
#[derive(Debug, ClapArgs)]
pub struct Connection {
    /// Master URL, e.g. https://192.168.1.10:6443 [default: from the client config]
    #[arg(long, global = true, env = "BRAMBLE_SERVER")]
    pub server: Option<String>,
    /// Bearer token [default: from the client config]
    #[arg(long, global = true, env = "BRAMBLE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Client config file [default: ~/.bramble/config, then /var/lib/bramble/master/client.yaml]
    #[arg(long, global = true, env = "BRAMBLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The cluster CA file (PEM) the server's certificate must chain to [default: from the
    /// client config]
    #[arg(long, global = true, env = "BRAMBLE_CERTIFICATE_AUTHORITY")]
    pub certificate_authority: Option<PathBuf>,
    /// Do not verify the server's certificate (insecure: anyone in between reads the token)
    #[arg(long, global = true)]
    pub insecure_skip_tls_verify: bool,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update objects from manifests (YAML or JSON)
    Apply(ApplyArgs),
    /// Create a ConfigMap or a Secret from literals and files
    #[command(subcommand)]
    Create(CreateCommand),
    /// Secrets at rest on the master
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// List objects, or show some by name
    Get(GetArgs),
    /// Show an object in detail, with its events
    Describe(DescribeArgs),
    /// Delete objects by kind and name, or those in manifests
    Delete(DeleteArgs),
    /// Print a container's log (fetched from its node's agent)
    Logs(LogsArgs),
    /// Run a command in a container (through its node's agent)
    Exec(ExecArgs),
    /// Forward local ports to a pod's ports (through its node's agent)
    PortForward(PortForwardArgs),
    /// CPU and memory use of nodes or pods (reported by the agents)
    #[command(subcommand)]
    Top(TopCommand),
    /// Join tokens for new nodes
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print a kubeconfig for kubectl and the Kubernetes client libraries
    Kubeconfig(KubeconfigArgs),
    /// Images on the master: import archives, list, remove
    #[command(subcommand)]
    Image(ImageCommand),
    /// Set a Deployment's replica count
    Scale(ScaleArgs),
    /// Follow or restart a Deployment's or DaemonSet's rollout
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Mark a node unschedulable
    Cordon(NodeArgs),
    /// Mark a node schedulable again
    Uncordon(NodeArgs),
    /// Cordon a node and delete its pods so that their owners replace them elsewhere
    Drain(NodeArgs),
    /// A node's credential: let a join take it over, or revoke it
    #[command(subcommand)]
    Node(NodeCommand),
}

/// `bramble create`.
#[derive(Debug, Subcommand)]
pub enum CreateCommand {
    /// A ConfigMap
    #[command(visible_alias = "cm")]
    Configmap(ConfigSources),
    /// A Secret
    #[command(subcommand)]
    Secret(SecretKind),
    /// A Job from a CronJob's template (`--from cronjob/NAME`), run now
    Job {
        name: String,
        /// `cronjob/NAME`
        #[arg(long)]
        from: String,
    },
}

/// `bramble create secret`.
#[derive(Debug, Subcommand)]
pub enum SecretKind {
    /// An Opaque (or --type) Secret from literals and files
    Generic {
        #[command(flatten)]
        sources: ConfigSources,
        /// The Secret's type [default: Opaque]
        #[arg(long = "type")]
        type_: Option<String>,
    },
    /// A kubernetes.io/tls Secret from a certificate and its key (PEM files)
    Tls {
        name: String,
        /// The certificate (chain), PEM
        #[arg(long)]
        cert: PathBuf,
        /// The private key, PEM
        #[arg(long)]
        key: PathBuf,
    },
}

/// The keys of a ConfigMap or Secret, as `kubectl create` takes them.
#[derive(Debug, ClapArgs)]
pub struct ConfigSources {
    pub name: String,
    /// KEY=VALUE (repeatable)
    #[arg(long = "from-literal")]
    pub literals: Vec<String>,
    /// PATH (the key is the file name), KEY=PATH, or a directory (each file in it)
    #[arg(long = "from-file")]
    pub files: Vec<String>,
    /// A file of KEY=VALUE lines (# comments and blank lines skipped)
    #[arg(long = "from-env-file")]
    pub env_files: Vec<PathBuf>,
}

/// `bramble secrets`.
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Make a new key for Secrets at rest, seal every Secret with it, drop the old key
    RotateKey,
}

/// `bramble node`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Let one join with a join token replace a joined node's credential, within an hour
    /// (a board whose card was written afresh); its old credential works until then
    Approve(NodeArgs),
    /// Revoke a node's credential at once (its MQTT session is cut, reconnects refused);
    /// the Node stays, and a board may join under its name again
    Reset(NodeArgs),
}

/// `bramble scale`.
#[derive(Debug, ClapArgs)]
pub struct ScaleArgs {
    /// `deployment/NAME`, or `deploy NAME`
    pub target: Vec<String>,
    /// The new replica count
    #[arg(long)]
    pub replicas: i32,
}

/// `bramble rollout`.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Wait until the Deployment's (or DaemonSet's) rollout is complete
    Status {
        /// `deployment/NAME`, or `deploy NAME`
        target: Vec<String>,
        /// Give up after this many seconds
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// List the Deployment's (or DaemonSet's) revisions
    History {
        /// `deployment/NAME`, `ds/NAME`, or `deploy NAME`
        target: Vec<String>,
    },
    /// Go back to the previous revision (or --to-revision N)
    Undo {
        /// `deployment/NAME`, `ds/NAME`, or `deploy NAME`
        target: Vec<String>,
        /// The revision to go back to [default: the one before the current]
        #[arg(long)]
        to_revision: Option<i64>,
    },
    /// Replace every pod of the Deployment (or DaemonSet), by rollout
    Restart {
        /// `deployment/NAME`, or `deploy NAME`
        target: Vec<String>,
    },
}

/// A node name.
#[derive(Debug, ClapArgs)]
pub struct NodeArgs {
    /// Node name
    pub node: String,
}

/// `bramble logs`.
#[derive(Debug, ClapArgs)]
pub struct LogsArgs {
    /// Pod name
    pub pod: String,
    /// Container name [default: the pod's only container]
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Keep printing new output
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines
    #[arg(long)]
    pub tail: Option<u64>,
    /// The previous instance of the container (after a restart)
    #[arg(short = 'p', long)]
    pub previous: bool,
}

/// `bramble top`.
#[derive(Debug, Subcommand)]
pub enum TopCommand {
    /// Nodes' use, and its share of what they can allocate
    #[command(alias = "node", alias = "no")]
    Nodes,
    /// Pods' use, the sum of their containers'
    #[command(alias = "pod", alias = "po")]
    Pods {
        /// Every namespace
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Only pods with these labels, e.g. app=web
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// One line per container
        #[arg(long)]
        containers: bool,
    },
}

/// `bramble exec`.
#[derive(Debug, ClapArgs)]
pub struct ExecArgs {
    /// Pod name
    pub pod: String,
    /// Container name [default: the pod's only container]
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Pass standard input to the command
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Give the command a terminal
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The command and its arguments, after --
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `bramble port-forward`.
#[derive(Debug, ClapArgs)]
pub struct PortForwardArgs {
    /// Pod name
    pub pod: String,
    /// Ports as [LOCAL:]REMOTE (LOCAL 0 or empty: any free port)
    #[arg(required = true)]
    pub ports: Vec<String>,
    /// The local address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
}

/// `bramble image`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an OCI archive (`skopeo copy ... oci-archive:FILE`) or a `docker save` tarball
    Import {
        /// The archive; `-` reads standard input
        file: String,
        /// Name the image REPOSITORY[:TAG] (the tag defaults to the archive's own)
        #[arg(long)]
        name: Option<String>,
    },
    /// List imported images
    #[command(alias = "list")]
    Ls,
    /// Remove an image (refused while a pod uses it, unless --force)
    #[command(alias = "remove")]
    Rm {
        /// REPOSITORY[:TAG]
        #[arg(required = true)]
        references: Vec<String>,
        /// Remove even if pods use it
        #[arg(long)]
        force: bool,
    },
}

/// `bramble kubeconfig`.
#[derive(Debug, clap::Args)]
pub struct KubeconfigArgs {
    /// The API's URL as the other machine reaches it [default: this client's]
    #[arg(long)]
    pub server: Option<String>,
    /// A new API token for this user in it (made now) instead of this client's token
    #[arg(long, requires = "role")]
    pub user: Option<String>,
    /// What the new user's token may do: admin (everything) or reader (get, list, watch)
    #[arg(long, value_parser = ["admin", "reader"], requires = "user")]
    pub role: Option<String>,
}

/// `bramble token`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token (printed pinned to the cluster CA: B10<hash>::<secret>), or with
    /// --user an API token for a person or program (printed once; only its hash is kept)
    Create {
        /// How long it is valid, e.g. 1h, 30m, 7d; 0 for never [default: 24h for a join
        /// token, never for a user's]
        #[arg(long)]
        ttl: Option<String>,
        /// How many joins it allows [default: 1]
        #[arg(long, conflicts_with_all = ["reusable", "user"])]
        uses: Option<u32>,
        /// Any number of joins (a fleet)
        #[arg(long, conflicts_with = "user")]
        reusable: bool,
        /// Only for these node names: one name, or a prefix ending in * ('rack1-*')
        #[arg(long, conflicts_with = "user")]
        nodes: Option<String>,
        /// What it is for
        #[arg(long, default_value = "")]
        description: String,
        /// An API token for this user instead of a join token
        #[arg(long, requires = "role")]
        user: Option<String>,
        /// What the user's token may do: admin (everything) or reader (get, list, watch)
        #[arg(long, value_parser = ["admin", "reader"], requires = "user")]
        role: Option<String>,
    },
    /// List join tokens (by ID: the master keeps only their hashes) and users' tokens
    List,
    /// Revoke a node's own credential at once (its MQTT session is cut and refused); the
    /// Node stays, and a board may join under its name again
    RevokeNode {
        /// Node names
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Delete join tokens (a board that has joined keeps its own credential), or with
    /// --user revoke a user's API token
    #[command(alias = "rm")]
    Delete {
        /// Token IDs as `bramble token list` prints them, or whole tokens
        #[arg(required_unless_present = "user")]
        tokens: Vec<String>,
        /// Revoke this user's API token
        #[arg(long)]
        user: Option<String>,
    },
}

/// `bramble apply`.
#[derive(Debug, ClapArgs)]
pub struct ApplyArgs {
    /// Manifest file, directory (its .yaml, .yml and .json files) or - for standard input
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    /// Descend into subdirectories of a directory
    #[arg(short = 'R', long)]
    pub recursive: bool,
}

/// Output formats of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table with more columns
    Wide,
    Yaml,
    Json,
    /// kind/name
    Name,
}

/// `bramble get`.
#[derive(Debug, ClapArgs)]
pub struct GetArgs {
    /// Kind: pods (po), deployments (deploy), services (svc), nodes (no), namespaces (ns), endpoints (ep), events (ev)
    pub kind: String,
    /// Names of objects to show [default: all]
    pub names: Vec<String>,
    /// Across all namespaces
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Label selector, e.g. app=web,tier!=db
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Output format [default: a table]
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
    /// After listing, watch for changes
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Omit the table header
    #[arg(long)]
    pub no_headers: bool,
}

/// `bramble describe`.
#[derive(Debug, ClapArgs)]
pub struct DescribeArgs {
    /// Kind, as for get
    pub kind: String,
    /// Object name
    pub name: String,
}

/// `bramble delete`.
#[derive(Debug, ClapArgs)]
pub struct DeleteArgs {
    /// Kind, as for get (omit with -f)
    pub kind: Option<String>,
    /// Names of objects to delete
    pub names: Vec<String>,
    /// Delete the objects in these manifests
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    /// Seconds a pod gets to stop [default: the pod's terminationGracePeriodSeconds]
    #[arg(long)]
    pub grace_period: Option<i64>,
    /// Remove at once without waiting for the node to confirm (grace period 0)
    #[arg(long)]
    pub force: bool,
    /// Succeed when an object does not exist
    #[arg(long)]
    pub ignore_not_found: bool,
}
