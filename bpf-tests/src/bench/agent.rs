//! The agent at scale, for the bench: the real `lb-agent run` on a lab node that owns 10,000
//! VIPs (10,000 Services allocated by the real standalone controller), beside the same agent
//! owning one VIP, measured the same way in the same run: the time from start until every VIP
//! is in the XDP map, the resident memory, and the CPU it uses at rest (heartbeats, lease
//! renewal, the configuration watch) over a fixed window.
use std::{
    fmt::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{PinDir, harness::agent::Agent, harness::lab::Lab, harness::scrape, unique};

pub const VIPS: usize = 10_000;
/// How long CPU use is sampled once the agent has settled.
pub const WINDOW: Duration = Duration::from_secs(10);

/// One agent's figures.
pub struct AgentFigures {
    pub vips: usize,
    /// From the agent's start until its metrics show every VIP announced.
    pub ready: Duration,
    pub rss_kb: u64,
    /// CPU time over [`WINDOW`] at rest, as a share of one CPU.
    pub cpu_share: f64,
}

fn write_dir(lab: &Lab, services: usize) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(unique("xdplb-agent-bench"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut yaml = format!(
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: scale, namespace: metallb-system}}\n\
         spec: {{addresses: [10.220.0.0/18]}}\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {{name: scale, namespace: metallb-system}}\nspec: {{}}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {{name: node-1}}\nstatus: {{addresses: [{{type: InternalIP, address: \"{}\"}}]}}\n",
        lab.nodes[0].ipv4
    );
    for i in 0..services {
        let _ = write!(
            yaml,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\nspec: {{type: LoadBalancer, ports: [{{port: 80}}]}}\n"
        );
    }
    std::fs::write(dir.join("config.yaml"), yaml).map_err(|e| e.to_string())?;
    crate::write_secret(&dir.join("secret"), "agent-bench-secret-0123456789\n")
        .map_err(|e| e.to_string())?;
    Ok(dir)
}

fn proc_field(pid: u32, file: &str) -> Result<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).map_err(|e| format!("{file}: {e}"))
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = proc_field(pid, "stat")?;
    // The command name may hold spaces; the fields after it are fixed.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("bad stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| "bad stat field".to_owned())
    };
    // After ")": state is field 0, utime 11, stime 12.
    Ok(num(11)? + num(12)?)
}

/// Starts one agent owning `services` VIPs and measures it.
pub fn measure(services: usize) -> Result<AgentFigures, String> {
    let lab = Lab::new("ag", 1);
    let dir = write_dir(&lab, services)?;
    let result = (|| {
        crate::harness::group::allocate(&dir);
        let pins = PinDir::new("agb");
        let started = Instant::now();
        let mut agent = Agent::run_node(
            &lab.nodes[0].ns,
            "node-1",
            &dir,
            pins.path(),
            &["--mode", "xdp-native"],
        );
        let addr = "127.0.0.1:7472".parse().map_err(|_| "address")?;
        let deadline = started + Duration::from_secs(120);
        let ready = loop {
            let announced = scrape::get(&lab.nodes[0].ns, addr, "/metrics")
                .ok()
                .and_then(|(_, body)| scrape::sample(&body, "xdplb_layer2_announced_vips", &[]));
            if announced == Some(services as f64) {
                break started.elapsed();
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{services} VIPs not announced within 120 s (metric: {announced:?})\n{}",
                    agent.log_text()
                ));
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                return Err(format!("the agent exited: {status}\n{}", agent.log_text()));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Let the gratuitous ARP rounds (5 s) and the first allocations settle.
        std::thread::sleep(Duration::from_secs(6));
        let pid = agent.child.id();
        let before = cpu_ticks(pid)?;
        let t0 = Instant::now();
        std::thread::sleep(WINDOW);
        let ticks = cpu_ticks(pid)? - before;
        let elapsed = t0.elapsed();
        let rss = crate::rss_kb(pid)?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let figures = AgentFigures {
            vips: services,
            ready,
            rss_kb: rss,
            cpu_share: ticks as f64 / hz / elapsed.as_secs_f64(),
        };
        agent.signal(libc::SIGTERM);
        let _ = agent.child.wait();
        Ok(figures)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
