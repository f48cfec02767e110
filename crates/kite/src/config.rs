//! Command-line flags, `KITE_*` environment variables and `/etc/kite/config.yaml`, merged as
//! K3s merges them: a flag on the command line wins, then its environment variable, then the
//! config file (whose keys are the flag names), then the default.

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG: &str = "/etc/kite/config.yaml";

/// `kite --help`: the commands in groups (a unit test checks that it names them all).
const HELP: &str = "\
{about}

{usage-heading} {usage}

Cluster:
  server        Run the control plane (API server, datastore, controllers, scheduler) and a node
  agent         Run a node that joins a server with a token
  token         Create, list and delete tokens that join nodes
  scheduler     Run only the scheduler against a cluster (kite server runs one)

Node:
  check-config  Check that this host can run a node, with the fix for each problem
  images        Import, list and remove the node's images (as k3s ctr images)
  ps            List the node's containers from containerd (works while the API is down)

Tools:
  kubectl       Run the system's kubectl with kite's kubeconfig
  ctr           Run containerd's ctr against kite's containerd (namespace k8s.io)
  sim           Simulated nodes, to try the control plane at scale
  help          Print this message or the help of a command

Options:
{options}

`kite COMMAND --help` for a command's flags. Docs: README.md; config: /etc/kite/config.yaml.
";

#[derive(Parser, Debug)]
#[command(
    name = "kite",
    about = "kite: a lightweight Kubernetes in one binary",
    version = crate::VERSION_LINE,
    args_override_self = true,
    help_template = HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the control plane (API server, datastore, controllers, scheduler) and a node.
    Server(Box<ServerArgs>),
    /// Run a node that joins a server with a token (kubelet, service proxy, DNS).
    Agent(Box<AgentArgs>),
    /// Manage bootstrap tokens that join nodes, with a time to live.
    Token(TokenArgs),
    /// Register simulated nodes and act as their kubelet (no containers run).
    Sim(SimArgs),
    /// Run only the scheduler against a cluster (as kube-scheduler does); `kite server`
    /// already runs one unless --disable-scheduler.
    Scheduler(ClientArgs),
    /// Manage the node's images in containerd (as `k3s ctr images`).
    Images(ImagesArgs),
    /// Check that this host can run kite: kernel features, cgroups, containerd, runc,
    /// nftables, free ports and disk; each problem with its fix; exits 1 on a failure.
    CheckConfig(CheckConfigArgs),
    /// Run the system's kubectl against this kite (its admin kubeconfig unless $KUBECONFIG
    /// is set), as `k3s kubectl`.
    #[command(disable_help_flag = true)]
    Kubectl(PassArgs),
    /// Run containerd's ctr against kite's containerd, in the pods' namespace (k8s.io).
    #[command(disable_help_flag = true)]
    Ctr(PassArgs),
    /// List the node's pods' containers from containerd (works while the API is down).
    Ps(PsArgs),
    /// Print one of the files install.sh installs (units, init scripts, kite-killall.sh,
    /// kite-uninstall.sh), so that a piped install needs nothing but the binary.
    #[command(hide = true)]
    Packaging { file: String },
}

/// Arguments passed on to another program unchanged.
#[derive(Args, Debug, Clone)]
pub struct PassArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<std::ffi::OsString>,
}

/// Where the node's containerd is, for the commands that talk to it directly.
#[derive(Args, Debug, Clone)]
pub struct ContainerdArgs {
    /// kite's data directory [default: /var/lib/kite as root, ~/.kite otherwise].
    #[arg(long, short = 'd', env = "KITE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// containerd socket, if not kite's own.
    #[arg(long, env = "KITE_CONTAINER_RUNTIME_ENDPOINT")]
    pub container_runtime_endpoint: Option<PathBuf>,
}

impl ContainerdArgs {
    /// The containerd socket these commands use.
    pub fn socket(&self) -> PathBuf {
        socket_of(&self.container_runtime_endpoint, &self.data_dir)
    }
}

/// `kite ps` flags.
#[derive(Args, Debug, Clone)]
pub struct PsArgs {
    #[command(flatten)]
    pub containerd: ContainerdArgs,
    /// Show exited containers too.
    #[arg(long, short = 'a')]
    pub all: bool,
}

/// The containerd socket kite's commands use: the one given, else the data dir's.
pub fn socket_of(endpoint: &Option<PathBuf>, data_dir: &Option<PathBuf>) -> PathBuf {
    endpoint.clone().unwrap_or_else(|| {
        let d = data_dir.clone().unwrap_or_else(default_data_dir);
        kite_kubelet::containerd::Paths::new(&d).socket
    })
}

/// The admin kubeconfig `kite server` writes by default.
pub fn default_kubeconfig() -> PathBuf {
    if is_root() {
        PathBuf::from("/etc/kite/kite.yaml")
    } else {
        home().join(".kube/kite.yaml")
    }
}

/// What `kite server` and `kite agent` both take: where their config and state are, and
/// how they log.
#[derive(Args, Debug, Clone)]
pub struct ProcessArgs {
    /// Config file (flag names as keys).
    #[arg(help_heading = "Config", long, short = 'c', env = "KITE_CONFIG_FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Folder to hold state [default: /var/lib/kite as root, ~/.kite otherwise].
    #[arg(help_heading = "Config", long, short = 'd', env = "KITE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Verbose logging.
    #[arg(help_heading = "Logging", long, env = "KITE_DEBUG")]
    pub debug: bool,
    /// Log lines as `text` (colours only on a terminal) or `json` (one object a line).
    #[arg(help_heading = "Logging", long, env = "KITE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// `kite agent` flags.
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    #[command(flatten)]
    pub process: ProcessArgs,
    /// The server to join, https://HOST:6443.
    #[arg(help_heading = "Cluster", long, short = 's', env = "KITE_URL")]
    pub server: Option<String>,
    /// The cluster's join token (a server's <data-dir>/server/node-token, or one from
    /// `kite token create`).
    #[arg(
        help_heading = "Cluster",
        long,
        short = 't',
        env = "KITE_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// A file holding the join token.
    #[arg(help_heading = "Cluster", long, env = "KITE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The loopback port of the agent's load balancer over the servers.
    #[arg(
        help_heading = "Cluster",
        long,
        env = "KITE_LB_SERVER_PORT",
        default_value_t = 6444
    )]
    pub lb_server_port: u16,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Settings checked and resolved from [`AgentArgs`].
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub server: kite_join::agent::ServerAddr,
    pub token: kite_join::token::Token,
    pub lb_port: u16,
    pub debug: bool,
    pub log_json: bool,
    pub node: NodeConfig,
}

impl AgentArgs {
    pub fn resolve(&self) -> Result<AgentConfig> {
        let data_dir = self
            .process
            .data_dir
            .clone()
            .unwrap_or_else(default_data_dir);
        let Some(url) = &self.server else {
            bail!("kite agent needs the server to join: --server https://HOST:6443 (or KITE_URL)");
        };
        let server =
            kite_join::agent::ServerAddr::parse(url).map_err(|e| anyhow::anyhow!("{e}"))?;
        let text = match (&self.token, &self.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("reading --token-file {}", f.display()))?,
            (None, None) => bail!("kite agent needs the cluster's join token: --token (or KITE_TOKEN), from the server's <data-dir>/server/node-token"),
        };
        let token = kite_join::token::Token::parse(&text)
            .map_err(|e| anyhow::anyhow!("invalid --token: {e}"))?;
        Ok(AgentConfig {
            node: self.node.resolve(&data_dir)?,
            data_dir,
            server,
            token,
            lb_port: self.lb_server_port,
            debug: self.process.debug,
            log_json: self.process.log_format == "json",
        })
    }
}

/// `kite token` flags and subcommands.
#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    /// Kubeconfig of the cluster [default: $KUBECONFIG, then kite's admin kubeconfig].
    #[arg(long, env = "KUBECONFIG", global = true)]
    pub kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    pub action: TokenAction,
}

impl TokenArgs {
    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig.clone().unwrap_or_else(default_kubeconfig)
    }
}

#[derive(Subcommand, Debug, Clone)]
pub enum TokenAction {
    /// Create a bootstrap token and print it as a join token.
    Create {
        /// How long it is valid (24h, 90m; 0 for ever).
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// What it is for.
        #[arg(long)]
        description: Option<String>,
    },
    /// List bootstrap tokens.
    #[command(alias = "ls")]
    List,
    /// Delete bootstrap tokens by id (or whole token).
    #[command(alias = "rm")]
    Delete {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// `kite check-config` flags: the server flags that change what is checked.
#[derive(Args, Debug, Clone)]
pub struct CheckConfigArgs {
    /// kite's data directory [default: /var/lib/kite as root, ~/.kite otherwise].
    #[arg(long, short = 'd', env = "KITE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTPS port of the API server.
    #[arg(long, env = "KITE_HTTPS_LISTEN_PORT", default_value_t = 6443)]
    pub https_listen_port: u16,
    /// The port of the node's kubelet server.
    #[arg(long, env = "KITE_KUBELET_PORT", default_value_t = 10250)]
    pub kubelet_port: u16,
    /// Check only what a control plane without a node needs.
    #[arg(long, env = "KITE_DISABLE_AGENT")]
    pub disable_agent: bool,
}

impl CheckConfigArgs {
    pub fn options(&self) -> kite_hostcheck::Options {
        let node = !self.disable_agent;
        let mut ports = vec![(self.https_listen_port, "--https-listen-port")];
        if node {
            ports.push((self.kubelet_port, "--kubelet-port"));
        }
        kite_hostcheck::Options {
            root: PathBuf::from("/"),
            path: std::env::var_os("PATH"),
            data_dir: self.data_dir.clone().unwrap_or_else(default_data_dir),
            ports,
            node,
            root_user: is_root(),
        }
    }
}

/// `kite images` flags and subcommands.
#[derive(Args, Debug, Clone)]
pub struct ImagesArgs {
    #[command(flatten)]
    pub containerd: ContainerdArgs,
    #[command(subcommand)]
    pub action: ImagesAction,
}

#[derive(Subcommand, Debug, Clone)]
pub enum ImagesAction {
    /// Import image archives (OCI layout or `docker save`; .tar, .tar.gz, .tar.zst).
    Import {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List images.
    #[command(alias = "list")]
    Ls,
    /// Remove images by name.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub fn default_data_dir() -> PathBuf {
    if is_root() {
        PathBuf::from("/var/lib/kite")
    } else {
        home().join(".kite")
    }
}

/// Flags of commands that are API clients of a cluster.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Kubeconfig of the cluster [default: $KUBECONFIG, then ~/.kube/config].
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

impl ClientArgs {
    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig
            .clone()
            .unwrap_or_else(|| home().join(".kube/config"))
    }
}

/// `kite sim` flags.
#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// Kubeconfig of the cluster to join [default: $KUBECONFIG, then ~/.kube/config].
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// How many nodes to simulate.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Node names are this prefix plus a number from 0.
    #[arg(long, default_value = "kite-sim-")]
    pub node_prefix: String,
    /// CPU capacity of each node.
    #[arg(long, default_value = "4")]
    pub cpu: String,
    /// Memory capacity of each node.
    #[arg(long, default_value = "16Gi")]
    pub memory: String,
    /// Pod capacity of each node.
    #[arg(long, default_value_t = 110)]
    pub pods: u32,
    /// Extra node labels, as k=v,k2=v2.
    #[arg(long, default_value = "")]
    pub labels: String,
    /// Node taints, as key=value:Effect,key2:Effect.
    #[arg(long, default_value = "")]
    pub taints: String,
    /// How long a bound pod takes to become Running, e.g. 500ms or 2s.
    #[arg(long, default_value = "0s")]
    pub start_delay: String,
    /// How often each node renews its Lease (keep it well under the server's
    /// --node-monitor-grace-period).
    #[arg(long, default_value = "10s")]
    pub heartbeat_interval: String,
}

/// Parses `300ms`, `2s`, `1m`, `40` (seconds).
pub fn parse_duration(key: &str, v: &str) -> Result<std::time::Duration> {
    let v = v.trim();
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| bad(key, v, "expected a duration such as 500ms, 40s or 5m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad(key, v, "expected a duration such as 500ms, 40s or 5m")),
    };
    Ok(std::time::Duration::from_secs_f64(secs))
}

impl SimArgs {
    pub fn resolve(&self) -> Result<(PathBuf, kite_sim::SimOptions)> {
        let kubeconfig = self
            .kubeconfig
            .clone()
            .unwrap_or_else(|| home().join(".kube/config"));
        for (k, v) in [("cpu", &self.cpu), ("memory", &self.memory)] {
            if kite_runtime::quantity::parse(v).is_none() {
                return Err(bad(k, v, "not a quantity such as 4, 500m or 16Gi"));
            }
        }
        if kite_api::validation::dns1123_subdomain(&format!("{}0", self.node_prefix)).is_some() {
            return Err(bad(
                "node-prefix",
                &self.node_prefix,
                "node names must be lowercase RFC 1123 subdomains",
            ));
        }
        let labels = kite_sim::spec::parse_labels(&self.labels)
            .map_err(|e| bad("labels", &self.labels, &e.to_string()))?;
        let taints = kite_sim::spec::parse_taints(&self.taints)
            .map_err(|e| bad("taints", &self.taints, &e.to_string()))?;
        Ok((
            kubeconfig,
            kite_sim::SimOptions {
                nodes: self.nodes,
                prefix: self.node_prefix.clone(),
                cpu: self.cpu.clone(),
                memory: self.memory.clone(),
                pods: self.pods,
                labels,
                taints,
                start_delay: parse_duration("start-delay", &self.start_delay)?,
                heartbeat_interval: parse_duration("heartbeat-interval", &self.heartbeat_interval)?
                    .max(std::time::Duration::from_millis(100)),
            },
        ))
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    #[command(flatten)]
    pub process: ProcessArgs,
    /// Address the API server listens on.
    #[arg(
        help_heading = "API server",
        long,
        env = "KITE_BIND_ADDRESS",
        default_value = "0.0.0.0"
    )]
    pub bind_address: String,
    /// HTTPS port of the API server.
    #[arg(
        help_heading = "API server",
        long,
        env = "KITE_HTTPS_LISTEN_PORT",
        default_value_t = 6443
    )]
    pub https_listen_port: u16,
    /// Address other nodes and clients use to reach this server [default: the node's first IP].
    #[arg(help_heading = "API server", long, env = "KITE_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,
    /// Extra hostname or IP for the serving certificate (repeatable).
    #[arg(
        help_heading = "API server",
        long,
        env = "KITE_TLS_SAN",
        value_delimiter = ','
    )]
    pub tls_san: Vec<String>,
    /// Where to write the admin kubeconfig [default: /etc/kite/kite.yaml as root, ~/.kube/kite.yaml otherwise].
    #[arg(
        help_heading = "API server",
        long,
        short = 'o',
        env = "KITE_KUBECONFIG_OUTPUT"
    )]
    pub write_kubeconfig: Option<PathBuf>,
    /// File mode of the kubeconfig, in octal (e.g. 644).
    #[arg(
        help_heading = "API server",
        long,
        env = "KITE_KUBECONFIG_MODE",
        default_value = "600"
    )]
    pub write_kubeconfig_mode: String,
    /// Pod network range: IPv4, or IPv4,IPv6 for dual-stack pods (K3s's form).
    #[arg(
        help_heading = "Networking",
        long,
        env = "KITE_CLUSTER_CIDR",
        default_value = "10.42.0.0/16"
    )]
    pub cluster_cidr: String,
    /// Service ClusterIP range: IPv4, or IPv4,IPv6 for dual-stack Services.
    #[arg(
        help_heading = "Networking",
        long,
        env = "KITE_SERVICE_CIDR",
        default_value = "10.43.0.0/16"
    )]
    pub service_cidr: String,
    /// Cluster DNS service IP.
    #[arg(
        help_heading = "Networking",
        long,
        env = "KITE_CLUSTER_DNS",
        default_value = "10.43.0.10"
    )]
    pub cluster_dns: String,
    /// Cluster domain.
    #[arg(
        help_heading = "Networking",
        long,
        env = "KITE_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    pub cluster_domain: String,
    /// NodePort range, as FROM-TO.
    #[arg(
        help_heading = "Networking",
        long,
        env = "KITE_SERVICE_NODE_PORT_RANGE",
        default_value = "30000-32767"
    )]
    pub service_node_port_range: String,
    /// Run the control plane only, with no node.
    #[arg(help_heading = "Components", long, env = "KITE_DISABLE_AGENT")]
    pub disable_agent: bool,
    /// Seconds between compactions of the datastore's history; each drops the history
    /// older than one interval, as upstream's kube-apiserver does.
    #[arg(
        help_heading = "Datastore",
        long,
        env = "KITE_COMPACT_INTERVAL",
        default_value_t = 300
    )]
    pub compact_interval: u64,
    /// At most this many revisions of history are kept (watches may resume this far back).
    #[arg(
        help_heading = "Datastore",
        long,
        env = "KITE_COMPACT_RETAIN",
        default_value_t = 1000
    )]
    pub compact_retain: i64,
    /// How long a node may miss heartbeats before it is marked unhealthy.
    #[arg(
        help_heading = "Controllers",
        long,
        env = "KITE_NODE_MONITOR_GRACE_PERIOD",
        default_value = "40s"
    )]
    pub node_monitor_grace_period: String,
    /// tolerationSeconds of the not-ready toleration added to every pod.
    #[arg(
        help_heading = "Controllers",
        long,
        env = "KITE_DEFAULT_NOT_READY_TOLERATION_SECONDS",
        default_value_t = 300
    )]
    pub default_not_ready_toleration_seconds: i64,
    /// tolerationSeconds of the unreachable toleration added to every pod.
    #[arg(
        help_heading = "Controllers",
        long,
        env = "KITE_DEFAULT_UNREACHABLE_TOLERATION_SECONDS",
        default_value_t = 300
    )]
    pub default_unreachable_toleration_seconds: i64,
    /// Do not run the controller manager.
    #[arg(
        help_heading = "Components",
        long,
        env = "KITE_DISABLE_CONTROLLER_MANAGER"
    )]
    pub disable_controller_manager: bool,
    /// Do not run the scheduler.
    #[arg(help_heading = "Components", long, env = "KITE_DISABLE_SCHEDULER")]
    pub disable_scheduler: bool,
    /// Packaged components not to run, as K3s's --disable (repeat or comma-separate):
    /// `dns` (or K3s's name, `coredns`) leaves the cluster DNS to one you deploy;
    /// `servicelb` leaves LoadBalancer Services to another controller (MetalLB). K3s's
    /// other names (traefik, local-storage, metrics-server) are accepted.
    #[arg(
        help_heading = "Components",
        long = "disable",
        env = "KITE_DISABLE",
        value_delimiter = ','
    )]
    pub disable: Vec<String>,
    /// How nodes reach each other's pods (K3s's --flannel-backend): host-gw (routes via
    /// node IPs, nodes on one L2 segment), vxlan (an overlay for any IP network) or none
    /// (a CNI of your own).
    #[arg(
        help_heading = "Networking",
        long,
        env = "KITE_NETWORK_BACKEND",
        default_value = "vxlan",
        value_parser = ["host-gw", "vxlan", "wireguard-native", "none"]
    )]
    pub network_backend: String,
    /// Secret for joining nodes (servers and agents): the secret part of a K10… token, or
    /// a whole one [default: kept in <data-dir>/server/token, made on first start].
    #[arg(
        help_heading = "Cluster",
        long,
        short = 't',
        env = "KITE_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// How long the certificates issued to joining nodes are valid (agents renew them
    /// with a third left). Short values are for tests.
    #[arg(
        help_heading = "Cluster",
        long,
        env = "KITE_NODE_CERT_VALIDITY",
        default_value = "8760h",
        hide = true
    )]
    pub node_cert_validity: String,
    /// Secret that joins agents only [default: the --token].
    #[arg(
        help_heading = "Cluster",
        long,
        env = "KITE_AGENT_TOKEN",
        hide_env_values = true
    )]
    pub agent_token: Option<String>,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// The flags of a node, the same for `kite server` and `kite agent`.
#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// Node name [default: the hostname].
    #[arg(help_heading = "Node", long, env = "KITE_NODE_NAME")]
    pub node_name: Option<String>,
    /// Do not run the service proxy (Services then need another one, such as kube-proxy
    /// or a CNI that replaces it).
    #[arg(help_heading = "Components", long, env = "KITE_DISABLE_KUBE_PROXY")]
    pub disable_kube_proxy: bool,
    /// Do not enforce NetworkPolicies (leave them to a CNI that does).
    #[arg(help_heading = "Components", long, env = "KITE_DISABLE_NETWORK_POLICY")]
    pub disable_network_policy: bool,
    /// The resolv.conf whose nameservers the cluster DNS forwards other names to
    /// [default: /etc/resolv.conf, or systemd-resolved's upstream list when that names
    /// only loopback resolvers].
    #[arg(help_heading = "Networking", long, env = "KITE_RESOLV_CONF")]
    pub resolv_conf: Option<PathBuf>,
    /// The port of the service proxy's /healthz and /livez (kube-proxy's 10256); 0: none.
    #[arg(
        help_heading = "Networking",
        long,
        env = "KITE_PROXY_HEALTHZ_PORT",
        default_value_t = 10256
    )]
    pub proxy_healthz_port: u16,
    /// containerd socket to use instead of starting kite's own containerd.
    #[arg(help_heading = "Node", long, env = "KITE_CONTAINER_RUNTIME_ENDPOINT")]
    pub container_runtime_endpoint: Option<PathBuf>,
    /// The node's InternalIP [default: the advertise address]; IPv4,IPv6 for both on a
    /// dual-stack cluster (default there: the host's first global IPv6 address too;
    /// host-gw routes IPv6 pods via it).
    #[arg(help_heading = "Node", long, env = "KITE_NODE_IP")]
    pub node_ip: Option<String>,
    /// The node's ExternalIP.
    #[arg(help_heading = "Node", long, env = "KITE_NODE_EXTERNAL_IP")]
    pub node_external_ip: Option<String>,
    /// Label for the node at registration, key=value (repeatable).
    #[arg(
        help_heading = "Node",
        long,
        env = "KITE_NODE_LABEL",
        value_delimiter = ','
    )]
    pub node_label: Vec<String>,
    /// Taint for the node at registration, key=value:Effect (repeatable).
    #[arg(
        help_heading = "Node",
        long,
        env = "KITE_NODE_TAINT",
        value_delimiter = ','
    )]
    pub node_taint: Vec<String>,
    /// Registry mirrors and credentials, in K3s's registries.yaml format
    /// [default: /etc/kite/registries.yaml, if present].
    #[arg(help_heading = "Node", long, env = "KITE_PRIVATE_REGISTRY")]
    pub private_registry: Option<PathBuf>,
    /// CNI network configurations: if this directory holds one, pods get their network
    /// from those plugins instead of kite's built-in bridge.
    #[arg(
        help_heading = "Networking",
        long,
        env = "KITE_CNI_CONF_DIR",
        default_value = "/etc/cni/net.d"
    )]
    pub cni_conf_dir: PathBuf,
    /// Where the CNI plugins are (repeatable).
    #[arg(
        help_heading = "Networking",
        long,
        env = "KITE_CNI_BIN_DIR",
        value_delimiter = ',',
        default_value = "/opt/cni/bin"
    )]
    pub cni_bin_dir: Vec<PathBuf>,
    /// The port of the node's kubelet server (logs, exec, port-forward go through it).
    #[arg(
        help_heading = "Node",
        long,
        env = "KITE_KUBELET_PORT",
        default_value_t = 10250
    )]
    pub kubelet_port: u16,
    /// Where container logs are written, one directory per pod; links to them go to the
    /// `containers` directory beside it.
    #[arg(
        help_heading = "Node",
        long,
        env = "KITE_POD_LOGS_DIR",
        default_value = "/var/log/pods"
    )]
    pub pod_logs_dir: PathBuf,
    /// A container's log is rotated when it reaches this size (a quantity: 10Mi, 500Ki).
    #[arg(
        help_heading = "Node",
        long,
        env = "KITE_CONTAINER_LOG_MAX_SIZE",
        default_value = "10Mi"
    )]
    pub container_log_max_size: String,
    /// Log files kept per container, the current one included (at least 2).
    #[arg(
        help_heading = "Node",
        long,
        env = "KITE_CONTAINER_LOG_MAX_FILES",
        default_value_t = 5
    )]
    pub container_log_max_files: usize,
    /// Hard eviction thresholds, as upstream's kubelet: SIGNAL<AMOUNT, comma-separated
    /// (signals memory.available, nodefs.available, nodefs.inodesFree, imagefs.available,
    /// imagefs.inodesFree, pid.available; amounts a quantity or a percentage; "" for none).
    #[arg(help_heading = "Node", long, env = "KITE_EVICTION_HARD", default_value = kite_kubelet::eviction::DEFAULT_HARD)]
    pub eviction_hard: String,
    /// How long a pressure condition stays after its signal clears (a duration: 5m, 30s).
    #[arg(
        help_heading = "Node",
        long,
        env = "KITE_EVICTION_PRESSURE_TRANSITION_PERIOD",
        default_value = "5m"
    )]
    pub eviction_pressure_transition_period: String,
    /// The cgroup the node's pods go under (a name starting with `kite`): nodes that
    /// share a host each need their own.
    #[arg(
        help_heading = "Node",
        long,
        env = "KITE_CGROUP_ROOT",
        default_value = "kite"
    )]
    pub cgroup_root: String,
    /// Append a unique id to the node name (machines that share a hostname).
    #[arg(help_heading = "Node", long, env = "KITE_WITH_NODE_ID")]
    pub with_node_id: bool,
}

/// Settings checked and resolved from [`ServerArgs`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub bind: std::net::IpAddr,
    pub port: u16,
    pub advertise: String,
    pub tls_sans: Vec<String>,
    pub kubeconfig: PathBuf,
    pub kubeconfig_mode: u32,
    pub cluster_cidr: ipnet::Ipv4Net,
    /// The pod network's IPv6 range of a dual-stack cluster.
    pub cluster_cidr_v6: Option<ipnet::Ipv6Net>,
    pub service_cidr: ipnet::Ipv4Net,
    /// The Services' IPv6 range of a dual-stack cluster.
    pub service_cidr_v6: Option<ipnet::Ipv6Net>,
    pub cluster_dns: std::net::Ipv4Addr,
    pub cluster_domain: String,
    pub node_port_range: (i64, i64),
    pub disable_agent: bool,
    pub debug: bool,
    pub log_json: bool,
    pub compact_interval: std::time::Duration,
    pub compact_retain: i64,
    pub node_monitor_grace_period: std::time::Duration,
    pub not_ready_toleration_seconds: i64,
    pub unreachable_toleration_seconds: i64,
    pub disable_controller_manager: bool,
    pub disable_scheduler: bool,
    pub disable_dns: bool,
    pub disable_servicelb: bool,
    pub network_backend: kite_network::Backend,
    pub node_cert_validity: std::time::Duration,
    pub token: Option<String>,
    pub agent_token: Option<String>,
    pub node: NodeConfig,
}

/// Settings of a node checked and resolved from [`NodeArgs`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_name: String,
    pub disable_kube_proxy: bool,
    pub disable_network_policy: bool,
    pub resolv_conf: Option<PathBuf>,
    pub proxy_healthz_port: u16,
    pub container_runtime_endpoint: Option<PathBuf>,
    /// The node's InternalIP; None: the server's advertise address, or for an agent the
    /// address it reaches the server from.
    pub node_ip: Option<std::net::IpAddr>,
    /// Its IPv6 InternalIP too (`--node-ip v4,v6`).
    pub node_ip6: Option<std::net::Ipv6Addr>,
    pub node_external_ip: Option<std::net::IpAddr>,
    pub node_labels: std::collections::BTreeMap<String, String>,
    pub node_taints: Vec<k8s_openapi::api::core::v1::Taint>,
    pub registries: kite_kubelet::registries::Registries,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    pub pod_logs_dir: PathBuf,
    pub log_rotation: kite_kubelet::logs::Rotation,
    pub eviction: kite_kubelet::eviction::Settings,
    pub kubelet_port: u16,
    pub cgroup_root: String,
}

/// Parses a range flag: `IPv4` or `IPv4,IPv6` (a dual-stack cluster, IPv4 first), each
/// truncated to its network; `max_v4`/`max_v6` are the longest prefixes allowed.
pub fn parse_dual_cidr(
    v: &str,
    max_v4: u8,
    max_v6: u8,
) -> std::result::Result<(ipnet::Ipv4Net, Option<ipnet::Ipv6Net>), String> {
    let mut parts = v.split(',').map(str::trim);
    let first = parts.next().unwrap_or_default();
    let v4 = match first.parse::<ipnet::IpNet>() {
        Ok(ipnet::IpNet::V4(n)) => n.trunc(),
        Ok(ipnet::IpNet::V6(_)) => {
            return Err("an IPv6-first (or IPv6-only) cluster is not supported: give the IPv4 range first, e.g. 10.42.0.0/16,fd42::/56".into())
        }
        Err(_) => return Err("not a CIDR such as 10.43.0.0/16 (or IPv4,IPv6 for dual-stack)".into()),
    };
    if v4.prefix_len() > max_v4 {
        return Err(format!("{v4} is too small; use a /{max_v4} or larger"));
    }
    let v6 = match parts.next() {
        None => None,
        Some(second) => match second.parse::<ipnet::IpNet>() {
            Ok(ipnet::IpNet::V6(n)) => Some(n.trunc()),
            Ok(ipnet::IpNet::V4(_)) => {
                return Err("a dual-stack range is one IPv4 and one IPv6 CIDR".into())
            }
            Err(_) => return Err(format!("{second:?} is not an IPv6 CIDR such as fd42::/56")),
        },
    };
    if let Some(n) = v6.filter(|n| n.prefix_len() > max_v6) {
        return Err(format!("{n} is too small; use a /{max_v6} or larger"));
    }
    if parts.next().is_some() {
        return Err("at most two ranges, one IPv4 and one IPv6".into());
    }
    Ok((v4, v6))
}

/// A dual range as the flag writes it.
pub fn show_dual_cidr<A: std::fmt::Display, B: std::fmt::Display>(v4: A, v6: Option<B>) -> String {
    match v6 {
        Some(v6) => format!("{v4},{v6}"),
        None => v4.to_string(),
    }
}

fn bad(key: &str, value: &str, why: &str) -> anyhow::Error {
    anyhow::anyhow!("invalid value {value:?} for --{key}: {why}")
}

impl ServerArgs {
    pub fn resolve(&self) -> Result<ServerConfig> {
        let data_dir = self
            .process
            .data_dir
            .clone()
            .unwrap_or_else(default_data_dir);
        let kubeconfig = self
            .write_kubeconfig
            .clone()
            .unwrap_or_else(default_kubeconfig);
        let bind = self
            .bind_address
            .parse()
            .map_err(|_| bad("bind-address", &self.bind_address, "not an IP address"))?;
        let kubeconfig_mode = u32::from_str_radix(&self.write_kubeconfig_mode, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                bad(
                    "write-kubeconfig-mode",
                    &self.write_kubeconfig_mode,
                    "not an octal file mode such as 600 or 644",
                )
            })?;
        let (cluster_cidr, cluster_cidr_v6) = parse_dual_cidr(&self.cluster_cidr, 24, 64)
            .map_err(|why| bad("cluster-cidr", &self.cluster_cidr, &why))?;
        let (service_cidr, service_cidr_v6) = parse_dual_cidr(&self.service_cidr, 28, 124)
            .map_err(|why| bad("service-cidr", &self.service_cidr, &why))?;
        if let Some(v6) = service_cidr_v6.filter(|n| n.prefix_len() < 108) {
            return Err(bad(
                "service-cidr",
                &self.service_cidr,
                &format!("the IPv6 range {v6} is too large; use a /108 or smaller, as upstream's API server"),
            ));
        }
        let mut disable_dns = false;
        let mut disable_servicelb = false;
        for d in &self.disable {
            match d.trim() {
                "dns" | "coredns" => disable_dns = true,
                "servicelb" => disable_servicelb = true,
                "traefik" | "local-storage" | "metrics-server" | "" => {}
                other => {
                    return Err(bad(
                        "disable",
                        other,
                        "kite can disable: dns, servicelb (K3s's coredns, traefik, local-storage and metrics-server are accepted)",
                    ))
                }
            }
        }
        let cluster_dns: std::net::Ipv4Addr = self
            .cluster_dns
            .parse()
            .map_err(|_| bad("cluster-dns", &self.cluster_dns, "not an IPv4 address"))?;
        if !service_cidr.contains(&cluster_dns) {
            return Err(bad(
                "cluster-dns",
                &self.cluster_dns,
                &format!("not inside --service-cidr {service_cidr}"),
            ));
        }
        let range = self
            .service_node_port_range
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<i64>().ok()?, b.trim().parse::<i64>().ok()?)))
            .filter(|(a, b)| 0 < *a && a <= b && *b <= 65535)
            .ok_or_else(|| {
                bad(
                    "service-node-port-range",
                    &self.service_node_port_range,
                    "expected FROM-TO, e.g. 30000-32767",
                )
            })?;
        let advertise = match &self.advertise_address {
            Some(a) => {
                a.parse::<std::net::IpAddr>()
                    .map_err(|_| bad("advertise-address", a, "not an IP address"))?;
                a.clone()
            }
            None => crate::host::node_ips()
                .first()
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "127.0.0.1".into()),
        };
        let backend = kite_network::Backend::parse(&self.network_backend).ok_or_else(|| {
            bad(
                "network-backend",
                &self.network_backend,
                "expected host-gw, vxlan, wireguard-native or none",
            )
        })?;
        let node = self.node.resolve(&data_dir)?;
        Ok(ServerConfig {
            node,
            network_backend: backend,
            node_cert_validity: parse_duration("node-cert-validity", &self.node_cert_validity)?
                .max(std::time::Duration::from_secs(30)),
            token: self.token.clone().filter(|t| !t.trim().is_empty()),
            agent_token: self.agent_token.clone().filter(|t| !t.trim().is_empty()),
            data_dir,
            bind,
            port: self.https_listen_port,
            advertise,
            tls_sans: self.tls_san.clone(),
            kubeconfig,
            kubeconfig_mode,
            cluster_cidr,
            cluster_cidr_v6,
            service_cidr,
            service_cidr_v6,
            cluster_dns,
            cluster_domain: self.cluster_domain.clone(),
            node_port_range: range,
            disable_agent: self.disable_agent,
            debug: self.process.debug,
            log_json: self.process.log_format == "json",
            compact_interval: std::time::Duration::from_secs(self.compact_interval.max(1)),
            compact_retain: self.compact_retain.max(0),
            node_monitor_grace_period: parse_duration(
                "node-monitor-grace-period",
                &self.node_monitor_grace_period,
            )?,
            not_ready_toleration_seconds: self.default_not_ready_toleration_seconds.max(0),
            unreachable_toleration_seconds: self.default_unreachable_toleration_seconds.max(0),
            disable_controller_manager: self.disable_controller_manager,
            disable_scheduler: self.disable_scheduler,
            disable_dns,
            disable_servicelb,
        })
    }
}

impl NodeArgs {
    pub fn resolve(&self, data_dir: &Path) -> Result<NodeConfig> {
        let node_name = match &self.node_name {
            Some(n) => n.clone(),
            None => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into())
                .to_lowercase(),
        };
        let node_name = if self.with_node_id {
            format!("{node_name}-{}", node_id(data_dir)?)
        } else {
            node_name
        };
        if kite_api::validation::dns1123_subdomain(&node_name).is_some() {
            return Err(bad(
                "node-name",
                &node_name,
                "must be a lowercase RFC 1123 subdomain",
            ));
        }
        let ip = |key: &str, v: &str| {
            v.parse::<std::net::IpAddr>()
                .map_err(|_| bad(key, v, "expected an IP address"))
        };
        let (node_ip, node_ip6) = match self.node_ip.as_deref().map(|v| v.split_once(',')) {
            None => (None, None),
            Some(None) => (
                self.node_ip
                    .as_deref()
                    .map(|v| ip("node-ip", v))
                    .transpose()?,
                None,
            ),
            Some(Some((a, b))) => {
                let v = self.node_ip.as_deref().unwrap_or_default();
                match (ip("node-ip", a.trim())?, ip("node-ip", b.trim())?) {
                    (std::net::IpAddr::V4(a), std::net::IpAddr::V6(b)) => {
                        (Some(std::net::IpAddr::V4(a)), Some(b))
                    }
                    _ => return Err(bad("node-ip", v, "expected one address, or IPv4,IPv6")),
                }
            }
        };
        let node_external_ip = self
            .node_external_ip
            .as_deref()
            .map(|v| ip("node-external-ip", v))
            .transpose()?;
        let mut node_labels = std::collections::BTreeMap::new();
        for l in &self.node_label {
            node_labels.extend(
                kite_sim::spec::parse_labels(l)
                    .map_err(|_| bad("node-label", l, "expected key=value"))?,
            );
        }
        let mut node_taints = Vec::new();
        for t in &self.node_taint {
            node_taints.extend(kite_sim::spec::parse_taints(t).map_err(|_| {
                bad(
                    "node-taint",
                    t,
                    "expected key=value:Effect (NoSchedule, PreferNoSchedule or NoExecute)",
                )
            })?);
        }
        let registries_file = self
            .private_registry
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/kite/registries.yaml"));
        if self.private_registry.is_some() && !registries_file.exists() {
            anyhow::bail!(
                "--private-registry {}: no such file",
                registries_file.display()
            );
        }
        let registries = kite_kubelet::registries::Registries::load(&registries_file)
            .map_err(|e| anyhow::anyhow!("invalid --private-registry file {e}"))?;
        // A CNI config that cannot be read would fail every pod: refuse it now.
        kite_kubelet::cni::Cni::new(&self.cni_conf_dir, &self.cni_bin_dir, data_dir)
            .config()
            .map_err(|e| anyhow::anyhow!("invalid --cni-conf-dir: {e}"))?;
        let max_size = kite_api::quantity::parse(&self.container_log_max_size)
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                bad(
                    "container-log-max-size",
                    &self.container_log_max_size,
                    "not a positive quantity (e.g. 10Mi)",
                )
            })?;
        if self.container_log_max_files < 2 {
            return Err(bad(
                "container-log-max-files",
                &self.container_log_max_files.to_string(),
                "must be at least 2",
            ));
        }
        let hard = kite_kubelet::eviction::parse(&self.eviction_hard)
            .map_err(|e| bad("eviction-hard", &self.eviction_hard, &e))?;
        let transition = parse_duration(
            "eviction-pressure-transition-period",
            &self.eviction_pressure_transition_period,
        )?;
        if !self.pod_logs_dir.is_absolute() {
            return Err(bad(
                "pod-logs-dir",
                &self.pod_logs_dir.display().to_string(),
                "must be an absolute path",
            ));
        }
        let cg = self.cgroup_root.trim_matches('/');
        if !cg.starts_with("kite")
            || !cg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(bad(
                "cgroup-root",
                &self.cgroup_root,
                "a name starting with kite, of letters, digits, '-', '_' and '.'",
            ));
        }
        Ok(NodeConfig {
            cgroup_root: cg.to_string(),
            node_name,
            kubelet_port: self.kubelet_port,
            pod_logs_dir: self.pod_logs_dir.clone(),
            log_rotation: kite_kubelet::logs::Rotation {
                max_size: u64::try_from(max_size).unwrap_or(u64::MAX),
                max_files: self.container_log_max_files,
            },
            eviction: kite_kubelet::eviction::Settings { hard, transition },
            cni_conf_dir: self.cni_conf_dir.clone(),
            cni_bin_dirs: self.cni_bin_dir.clone(),
            registries,
            node_ip,
            node_ip6,
            node_external_ip,
            node_labels,
            node_taints,
            disable_kube_proxy: self.disable_kube_proxy,
            disable_network_policy: self.disable_network_policy,
            resolv_conf: self.resolv_conf.clone(),
            proxy_healthz_port: self.proxy_healthz_port,
            container_runtime_endpoint: self
                .container_runtime_endpoint
                .clone()
                .map(|p| PathBuf::from(p.to_string_lossy().trim_start_matches("unix://"))),
        })
    }
}

/// A random id kept in `<data-dir>/agent/node-id`, for --with-node-id.
fn node_id(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("agent").join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_string();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let id = kite_join::token::random(8);
    kite_pki::write_file_atomic(&path, id.as_bytes(), 0o644)
        .with_context(|| format!("keeping the node id in {}", path.display()))?;
    Ok(id)
}

/// Turns one config-file entry into command-line arguments.
fn config_args(key: &str, value: &Value, out: &mut Vec<String>, file: &Path) -> Result<()> {
    match value {
        Value::Bool(true) => out.push(format!("--{key}")),
        Value::Bool(false) | Value::Null => {}
        Value::String(s) => out.push(format!("--{key}={s}")),
        Value::Number(n) => out.push(format!("--{key}={n}")),
        Value::Array(items) => {
            for i in items {
                config_args(key, i, out, file)?;
            }
        }
        Value::Object(_) => bail!(
            "{}: key {key:?} must be a value or a list, not a map",
            file.display()
        ),
    }
    Ok(())
}

fn arg_id(cmd: &clap::Command, key: &str) -> Option<String> {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(key))
        .map(|a| a.get_id().to_string())
}

/// Parses argv, then merges the config file of the subcommand underneath it.
pub fn parse() -> Result<Cli> {
    let argv: Vec<String> = std::env::args().collect();
    let cmd = Cli::command();
    let matches = cmd.clone().get_matches_from(&argv);
    let (which, sub) = match matches.subcommand() {
        Some((w @ ("server" | "agent"), sub)) => (w, sub),
        _ => return Ok(Cli::from_arg_matches(&matches)?),
    };
    let server_cmd = cmd
        .find_subcommand(which)
        .expect("subcommand exists")
        .clone();
    let path: PathBuf = sub
        .get_one::<PathBuf>("config")
        .cloned()
        .unwrap_or_else(|| DEFAULT_CONFIG.into());
    let explicit = sub.value_source("config") != Some(ValueSource::DefaultValue);
    let mut files = Vec::new();
    match std::fs::metadata(&path) {
        Ok(_) => files.push(path.clone()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {}
        Err(e) => return Err(e).with_context(|| format!("reading config file {}", path.display())),
    }
    files.extend(drop_ins(&path)?);
    if files.is_empty() {
        return Ok(Cli::from_arg_matches(&matches)?);
    }
    // Later files win; `key+` appends to the list so far.
    let mut merged: Vec<(String, Value, PathBuf)> = Vec::new();
    for file in &files {
        for (key, value) in read_config(file)? {
            let (name, append) = match key.strip_suffix('+') {
                Some(k) => (k.to_string(), true),
                None => (key.clone(), false),
            };
            if arg_id(&server_cmd, &name).is_none() {
                bail!(
                    "{}: unknown key {key:?} (keys are `kite {which}` flag names, e.g. {})",
                    file.display(),
                    if which == "server" {
                        "write-kubeconfig-mode"
                    } else {
                        "node-label"
                    }
                );
            }
            if name == "config" {
                bail!(
                    "{}: key \"config\" cannot be set from a config file",
                    file.display()
                );
            }
            match merged.iter_mut().find(|(k, _, _)| *k == name) {
                Some(entry) if append => {
                    let list = |v: Value| match v {
                        Value::Array(items) => items,
                        other => vec![other],
                    };
                    let mut items = list(std::mem::take(&mut entry.1));
                    items.extend(list(value));
                    entry.1 = Value::Array(items);
                    entry.2 = file.clone();
                }
                Some(entry) => *entry = (name, value, file.clone()),
                None => merged.push((name, value, file.clone())),
            }
        }
    }
    let mut extra = Vec::new();
    for (key, value, file) in &merged {
        let id = arg_id(&server_cmd, key).expect("checked above");
        if is_set_outside_config(sub, &id) {
            continue;
        }
        config_args(key, value, &mut extra, file)?;
    }
    // The config file's values go right after the subcommand, so flags given on the command
    // line come later and win.
    let pos = argv.iter().position(|a| a == which).unwrap_or(1);
    let mut merged = argv.clone();
    for (i, a) in extra.into_iter().enumerate() {
        merged.insert(pos + 1 + i, a);
    }
    let matches = Cli::command().try_get_matches_from(&merged).map_err(|e| {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        anyhow::anyhow!(
            "{}: {}",
            names.join(", "),
            e.to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ")
        )
    })?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// `FILE.d/*.yaml` (and `.yml`), in name order: drop-ins merged after FILE, as K3s does.
fn drop_ins(path: &Path) -> Result<Vec<PathBuf>> {
    let mut dir = path.as_os_str().to_owned();
    dir.push(".d");
    let dir = PathBuf::from(dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    out.sort();
    Ok(out)
}

/// One config file's map of flag names to values, in file order.
fn read_config(path: &Path) -> Result<serde_json::Map<String, Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    if text.trim().is_empty() {
        return Ok(Default::default());
    }
    let doc: Value = serde_saphyr::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not valid YAML: {}",
            path.display(),
            e.to_string().lines().next().unwrap_or_default()
        )
    })?;
    match doc {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Default::default()),
        _ => bail!("{}: expected a map of flag names to values", path.display()),
    }
}

fn is_set_outside_config(m: &ArgMatches, id: &str) -> bool {
    matches!(
        m.value_source(id),
        Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ServerArgs {
        let mut argv = vec!["kite", "server"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Server(a) => *a,
            _ => unreachable!("parsed `kite server`"),
        }
    }

    fn sim(extra: &[&str]) -> Result<(PathBuf, kite_sim::SimOptions)> {
        let mut argv = vec!["kite", "sim"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Sim(a) => a.resolve(),
            _ => unreachable!("parsed `kite sim`"),
        }
    }

    #[test]
    fn sim_flags_are_checked() {
        let (_, o) = sim(&[
            "--nodes",
            "5",
            "--labels",
            "zone=a",
            "--taints",
            "k=v:NoSchedule",
            "--start-delay",
            "500ms",
        ])
        .unwrap();
        assert_eq!(o.nodes, 5);
        assert_eq!(o.labels["zone"], "a");
        assert_eq!(o.taints[0].effect, "NoSchedule");
        assert_eq!(o.start_delay, std::time::Duration::from_millis(500));
        for bad in [
            &["--cpu", "lots"][..],
            &["--memory", "16Q"],
            &["--taints", "k=v:Never"],
            &["--labels", "novalue"],
            &["--start-delay", "soon"],
            &["--node-prefix", "Bad_"],
        ] {
            let e = sim(bad).unwrap_err().to_string();
            assert!(e.contains(&bad[0][2..]), "{e}");
        }
    }

    #[test]
    fn the_grouped_help_names_every_command() {
        let cmd = Cli::command();
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            assert!(
                HELP.contains(&format!("\n  {} ", sub.get_name())),
                "kite --help does not list {}",
                sub.get_name()
            );
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("x", "40s").unwrap().as_secs(), 40);
        assert_eq!(parse_duration("x", "2m").unwrap().as_secs(), 120);
        assert_eq!(parse_duration("x", "40").unwrap().as_secs(), 40);
        assert!(parse_duration("x", "4 0").is_err());
    }

    #[test]
    fn defaults_resolve() {
        let c = args(&["--node-name", "n1"]).resolve().unwrap();
        assert_eq!(c.port, 6443);
        assert_eq!(c.node_port_range, (30000, 32767));
        assert_eq!(c.service_cidr.to_string(), "10.43.0.0/16");
        assert_eq!(c.service_cidr_v6, None);
    }

    #[test]
    fn dual_stack_ranges() {
        let c = args(&[
            "--node-name",
            "n1",
            "--cluster-cidr",
            "10.42.0.0/16,fd42::/56",
            "--service-cidr",
            "10.43.0.0/16, fd43::/112",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.cluster_cidr_v6.unwrap().to_string(), "fd42::/56");
        assert_eq!(c.service_cidr_v6.unwrap().to_string(), "fd43::/112");
        for (flag, v, why) in [
            (
                "--service-cidr",
                "fd43::/112,10.43.0.0/16",
                "IPv4 range first",
            ),
            (
                "--service-cidr",
                "10.43.0.0/16,fd43::/64",
                "/108 or smaller",
            ),
            ("--cluster-cidr", "10.42.0.0/16,fd42::/96", "/64 or larger"),
            (
                "--cluster-cidr",
                "10.42.0.0/16,10.44.0.0/16",
                "one IPv4 and one IPv6",
            ),
            (
                "--cluster-cidr",
                "10.42.0.0/16,fd42::/56,fd44::/56",
                "at most two",
            ),
        ] {
            let e = args(&["--node-name", "n1", flag, v]).resolve().unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(flag) && msg.contains(why), "{v}: {msg}");
        }
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = args(&["--write-kubeconfig-mode", "999"])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("--write-kubeconfig-mode"));
        let e = args(&["--service-node-port-range", "5-1"])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("--service-node-port-range"));
        let e = args(&["--cluster-dns", "10.99.0.10"])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("--cluster-dns"));
        let e = args(&["--cluster-cidr", "10.42.0.0/25"])
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("--cluster-cidr"));
        assert!(args(&["--cluster-cidr", "10.42.0.0/24"]).resolve().is_ok());
    }

    #[test]
    fn config_values_become_args() {
        let mut out = Vec::new();
        config_args(
            "tls-san",
            &serde_json::json!(["a", "b"]),
            &mut out,
            Path::new("x"),
        )
        .unwrap();
        config_args("debug", &serde_json::json!(true), &mut out, Path::new("x")).unwrap();
        config_args(
            "https-listen-port",
            &serde_json::json!(7443),
            &mut out,
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(
            out,
            vec![
                "--tls-san=a",
                "--tls-san=b",
                "--debug",
                "--https-listen-port=7443"
            ]
        );
        assert!(config_args("x", &serde_json::json!({"a": 1}), &mut out, Path::new("x")).is_err());
    }
}
