//! The flags of `lb-agent run`.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;

use tracing::info;

use crate::{
    l2::{
        exclude::Exclusions,
        links::{LinkState, Selection},
        responders::Mode,
    },
    membership::driver::check_secret,
    source,
};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// This node's name, as in the Node objects.
    #[arg(long)]
    pub node_name: String,
    /// The standalone configuration directory (the controller writes status/ inside it).
    /// Without it the agent runs in a cluster (in-cluster credentials, or `$KUBECONFIG`).
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// In a cluster: where the metallb.io objects and the `memberlist` Secret live.
    #[arg(long, env = "POD_NAMESPACE", default_value = "metallb-system")]
    pub namespace: String,
    /// In a cluster: this agent's Pod name and UID (the downward API's `metadata.name` and
    /// `metadata.uid`): it owns the ServiceL2Status, ServiceBGPStatus and ConfigurationState
    /// objects the agent writes, so they go with the Pod.
    #[arg(long, env = "POD_NAME", requires = "pod_uid")]
    pub pod_name: Option<String>,
    #[arg(long, env = "POD_UID", requires = "pod_name")]
    pub pod_uid: Option<String>,
    /// In a cluster: serve only Services with this spec.loadBalancerClass (default: those with
    /// none, like MetalLB).
    #[arg(long)]
    pub lb_class: Option<String>,
    /// Interface to announce on (repeat for several). Default: every interface that is up,
    /// Ethernet, not loopback and has a global address, as MetalLB's speaker does.
    #[arg(long = "interface", short = 'i')]
    pub interfaces: Vec<String>,
    /// When choosing the interfaces itself, also leave out those whose name matches this
    /// regular expression (repeat for several), beside the container runtimes', CNI plugins'
    /// and kube-proxy's own devices, which are always left out.
    #[arg(long = "exclude-interface", value_name = "REGEX")]
    pub exclude_interfaces: Vec<String>,
    #[arg(long, default_value = lb_common::DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// How ARP/NDP is answered: XDP where it attaches and AF_PACKET elsewhere (`auto`), or
    /// only one of them.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// The shared membership secret (default: DIR/secret; in a cluster, the `memberlist`
    /// Secret's `secretkey`).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// UDP port of the membership heartbeats (MetalLB's memberlist port).
    #[arg(long, default_value_t = 7946)]
    pub port: u16,
    /// How often a heartbeat goes to every peer. With the timeout, chosen so that failover's
    /// p99 stays under 50 ms and a node with saturated CPUs or a loaded segment is never taken
    /// for dead (the bench's `failover` and `load` rows; README "Failover tuning").
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// Silence after which a peer is dead (and the data-path lease of this node's VIPs): three
    /// intervals, so that two lost datagrams in a row move nothing.
    #[arg(long, default_value = "30ms", value_parser = humantime::parse_duration)]
    pub failure_timeout: Duration,
    /// SCHED_FIFO priority of the membership thread (heartbeats, failure detection, the
    /// data-path lease), 1-99; 0 runs it as any other thread. Needs CAP_SYS_NICE; without it
    /// the agent says so and runs without.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=99))]
    pub membership_priority: u8,
    /// Where to serve /metrics, /healthz and /readyz (MetalLB's port by default).
    #[arg(long, default_value = "0.0.0.0:7472")]
    pub metrics_addr: SocketAddr,
    #[command(flatten)]
    pub secure_metrics: lb_controller::metrics_server::secure::Args,
    /// TCP port to accept BGP peers' connections on (sessions are also opened from here).
    #[arg(long, default_value_t = 179)]
    pub bgp_port: u16,
    /// Do not put owned VIPs on the local `xdplb0` device.
    #[arg(long)]
    pub no_local_vip: bool,
}

/// Whether a secret file's permission bits keep it secret: anyone who can read it can sign
/// heartbeats ("leaving" in any node's name, or keep a dead one alive). Readable or writable
/// by every user is refused, as ssh refuses such keys; by the group, a warning.
pub fn secret_mode(mode: u32) -> Result<(), String> {
    if mode & 0o007 != 0 {
        return Err(format!(
            "mode {:o} lets every user read or change the membership secret; chmod 600 it",
            mode & 0o777
        ));
    }
    if mode & 0o070 != 0 {
        tracing::warn!(
            mode = format!("{:o}", mode & 0o777),
            "the membership secret is accessible to its group; chmod 600 keeps it to its owner"
        );
    }
    Ok(())
}

impl RunArgs {
    /// The membership secret from `--secret-file` or DIR/secret, read now: it must be right.
    /// In a cluster (`None`) the Secret arrives with the configuration.
    pub fn file_secret(&self) -> anyhow::Result<Option<Vec<u8>>> {
        let path = self
            .secret_file
            .clone()
            .or_else(|| self.config_dir.as_ref().map(|d| d.join("secret")));
        let Some(path) = path else {
            return Ok(None);
        };
        let bytes = std::fs::read(&path)
            .with_context(|| format!("reading the membership secret {}", path.display()))?;
        let meta = std::fs::metadata(&path)
            .with_context(|| format!("reading the membership secret {}", path.display()))?;
        secret_mode(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let secret =
            check_secret(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(Some(secret))
    }

    /// Which interfaces to announce on: `--interface`, else every one that is up, Ethernet,
    /// addressed and not excluded.
    pub fn selection(&self) -> anyhow::Result<Selection> {
        Ok(match self.interfaces.is_empty() {
            true => Selection::Found(
                Exclusions::new(&self.exclude_interfaces).map_err(anyhow::Error::msg)?,
            ),
            false => Selection::Named(self.interfaces.clone()),
        })
    }

    /// The first reading's interfaces, refused when there is nothing to announce on, or a
    /// named interface does not exist: at start that is a mistake, later a NIC gone away.
    pub fn check_interfaces(&self, states: &[LinkState]) -> anyhow::Result<()> {
        for name in &self.interfaces {
            if !states.iter().any(|s| &s.iface.name == name) {
                anyhow::bail!("--interface {name}: no such Ethernet interface");
            }
        }
        if states.is_empty() {
            anyhow::bail!(
                "no interface to announce on: none is up, Ethernet, addressed and not excluded; name one with --interface"
            );
        }
        if self.interfaces.is_empty() {
            let found: Vec<&str> = states.iter().map(|s| s.iface.name.as_str()).collect();
            info!(interfaces = ?found, "announcing on the interfaces found (--interface to choose); following changes");
        }
        Ok(())
    }

    /// Who this agent is, for the API server source.
    pub fn cluster_source(&self) -> source::cluster::Options {
        source::cluster::Options {
            namespace: self.namespace.clone(),
            node: self.node_name.clone(),
            port: self.port,
            lb_class: self.lb_class.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_others_can_read_or_write_are_refused() {
        assert!(secret_mode(0o100600).is_ok());
        assert!(secret_mode(0o100400).is_ok());
        assert!(secret_mode(0o100640).is_ok(), "the group: a warning only");
        let e = secret_mode(0o100644).expect_err("world-readable");
        assert!(e.contains("644") && e.contains("chmod 600"), "{e}");
        assert!(secret_mode(0o100602).is_err(), "world-writable");
    }
}
