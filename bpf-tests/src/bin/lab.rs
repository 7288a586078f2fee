//! `cargo xtask lab up|down|status`: the demo's lab, left running to explore by hand.
//!
//! `up` builds the segment (a bridge), a client and three node namespaces, copies
//! `deploy/examples/standalone` to a configuration directory, runs the standalone controller,
//! one `lb-agent run` per node and FRR in the client's namespace (the router the example's
//! BGPPeer names) in the background, and writes what it started to a state file. `down` stops exactly those processes (by PID, checking each is still ours) and
//! deletes exactly those namespaces, pins and directories. Nothing else on the host is touched.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bpf_tests::{
    harness::agent::workspace_bin,
    harness::lab::Lab,
    peers::frr::{Frr, lab_router_conf},
    privileged,
};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(
    name = "xdplb-lab",
    about = "A standalone xdplb lab in network namespaces"
)]
struct Cli {
    /// Where the state file, configuration and logs live.
    #[arg(long, default_value = "/run/xdplb-lab")]
    dir: PathBuf,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Build the lab and start the controller and the agents.
    Up {
        /// The standalone configuration to copy (its Nodes must be node-1..3 at
        /// 10.210.0.11-13).
        #[arg(long, default_value = "deploy/examples/standalone")]
        config: PathBuf,
    },
    /// Stop what `up` started and delete what it created.
    Down,
    /// Show what is running.
    Status,
}

#[derive(Serialize, Deserialize)]
struct Process {
    what: String,
    pid: u32,
    log: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct State {
    segment: String,
    client: String,
    /// (node name, namespace, IPv4)
    nodes: Vec<(String, String, String)>,
    processes: Vec<Process>,
    pins: Vec<PathBuf>,
    config: PathBuf,
    /// The router's FRR pathspace (`vtysh -N NAME`) and its directories.
    #[serde(default)]
    router: Option<(String, Vec<PathBuf>)>,
}

const NODES: usize = 3;
/// The agents' pin directories live under this one.
const PINS: &str = "/sys/fs/bpf/xdplb-lab";

fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("{what} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn spawn(cmd: &mut Command, what: &str, log: PathBuf) -> Result<Process> {
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::create(&log).with_context(|| format!("{}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        // A group of its own: outlives this command and ignores the terminal's Ctrl-C.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    Ok(Process {
        what: what.to_owned(),
        pid: child.id(),
        log,
    })
}

fn up(dir: &Path, config_src: &Path) -> Result<()> {
    if state_file(dir).exists() {
        bail!(
            "a lab is up already ({}); take it down first: cargo xtask lab down",
            state_file(dir).display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let config = dir.join("config");
    std::fs::create_dir_all(&config)?;
    for entry in std::fs::read_dir(config_src)
        .with_context(|| format!("reading {}", config_src.display()))?
    {
        let path = entry?.path();
        if path.is_file()
            && let Some(name) = path.file_name()
        {
            std::fs::copy(&path, config.join(name))?;
        }
    }
    // The example's secret is a published placeholder, which agents refuse.
    bpf_tests::write_secret(&config.join("secret"), &bpf_tests::random_secret()?)?;
    let lab = Lab::new("lab", NODES);
    let mut processes = Vec::new();
    match start(&lab, dir, &config, &mut processes) {
        Ok((nodes, mut pins)) => {
            // The router the example's BGPPeer names, with BFD; left running for `down`.
            let frr = Frr::start(&lab.client.ns, &lab_router_conf(&lab), true);
            let name = frr.name.clone();
            let daemons = frr.daemons();
            let dirs = frr.leave_running();
            let conf = dirs[0].join("frr.conf");
            for (daemon, pid) in daemons {
                processes.push(Process {
                    what: format!("frr {daemon}"),
                    pid: u32::try_from(pid).unwrap_or_default(),
                    log: conf.clone(),
                });
            }
            let router = Some((name, dirs.to_vec()));
            pins.push(lab.pass_pins().to_owned());
            let state = State {
                segment: lab.segment.name.clone(),
                client: lab.client.ns.name.clone(),
                nodes,
                processes,
                pins,
                config,
                router,
            };
            std::fs::write(state_file(dir), serde_json::to_string_pretty(&state)?)?;
            // From here on the state file owns the namespaces and pins: `down` deletes them.
            std::mem::forget(lab);
            print_guide(dir, &state);
            Ok(())
        }
        Err(e) => {
            // Stop what did start; dropping the lab deletes its namespaces.
            for p in processes.iter().rev() {
                stop(p);
            }
            let _ = std::fs::remove_dir_all(&config);
            Err(e)
        }
    }
}

type Nodes = Vec<(String, String, String)>;

/// Starts the controller and the agents of `lab`, recording each process as it starts.
fn start(
    lab: &Lab,
    dir: &Path,
    config: &Path,
    processes: &mut Vec<Process>,
) -> Result<(Nodes, Vec<PathBuf>)> {
    let mut pins = Vec::new();
    processes.push(spawn(
        Command::new(workspace_bin("lb-controller"))
            .args(["run", "--metrics-addr", "127.0.0.1:0", "--config-dir"])
            .arg(config),
        "lb-controller",
        dir.join("controller.log"),
    )?);
    let allocations = config.join("status/allocations.yaml");
    wait_for(
        "the controller wrote no allocations",
        Duration::from_secs(20),
        || allocations.exists(),
    )?;
    let mut nodes = Vec::new();
    for (i, host) in lab.nodes.iter().enumerate() {
        let name = format!("node-{}", i + 1);
        // Per lab, so a test's lab and yours never share pins.
        let pin = PathBuf::from(PINS).join(&lab.segment.name).join(&name);
        let log = dir.join(format!("{name}.log"));
        processes.push(spawn(
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", host.ns.name))
                .arg(workspace_bin("lb-agent"))
                .args([
                    "run",
                    "--node-name",
                    &name,
                    "--interface",
                    "eth0",
                    "--config-dir",
                ])
                .arg(config)
                .arg("--bpffs")
                .arg(&pin),
            &format!("lb-agent {name}"),
            log.clone(),
        )?);
        wait_for(
            &format!("{name}'s agent did not start (see {})", log.display()),
            Duration::from_secs(20),
            || {
                std::fs::read_to_string(&log)
                    .map(|t| t.contains("running;"))
                    .unwrap_or(false)
            },
        )?;
        pins.push(pin);
        nodes.push((name, host.ns.name.clone(), host.ipv4.clone()));
    }
    Ok((nodes, pins))
}

fn print_guide(dir: &Path, s: &State) {
    println!("The lab is up (state in {}).", state_file(dir).display());
    println!(
        "  client:  ip netns exec {} bash   (10.210.0.1, fd00:210::1)",
        s.client
    );
    for (name, ns, ip) in &s.nodes {
        println!("  {name}:  ip netns exec {ns} bash   ({ip})");
    }
    println!("Try:");
    println!("  cat {}/status/allocations.yaml", s.config.display());
    println!(
        "  ip netns exec {} arping -c 3 -I eth0 10.210.0.100",
        s.client
    );
    println!("  ip netns exec {} ndisc6 fd00:210::100 eth0", s.client);
    if let Some((name, _)) = &s.router {
        println!("  vtysh -N {name} -c 'show bgp ipv4 unicast'   (the router: FRR, AS 65000)");
        println!("  ip netns exec {} ip route show 198.51.100.10", s.client);
    }
    if let Some((name, ns, _)) = s.nodes.first() {
        // In the node's namespace: the maps name interfaces by index, which only resolve there.
        println!(
            "  ip netns exec {ns} target/release/lb-agent maps --bpffs {PINS}/{}/{name}",
            s.segment
        );
        println!("  ip netns exec {ns} curl -s 127.0.0.1:7472/metrics");
    }
    println!(
        "  edit {}/services.yaml and watch the logs in {}",
        s.config.display(),
        dir.display()
    );
    println!("  cargo xtask lab down");
}

/// Whether `pid` still runs the program we started (PIDs are reused).
fn is_ours(p: &Process) -> bool {
    let program = if p.what.starts_with("lb-agent") {
        "lb-agent"
    } else {
        p.what.strip_prefix("frr ").unwrap_or("lb-controller")
    };
    std::fs::read(format!("/proc/{}/cmdline", p.pid))
        .map(|c| String::from_utf8_lossy(&c).contains(program))
        .unwrap_or(false)
}

fn stop(p: &Process) {
    if !is_ours(p) {
        return;
    }
    // SAFETY: kill(2) on a PID checked above to run the program we started.
    unsafe { libc::kill(p.pid as i32, libc::SIGTERM) };
    let gone = wait_for("", Duration::from_secs(3), || !is_ours(p));
    if gone.is_err() {
        // SAFETY: as above.
        unsafe { libc::kill(p.pid as i32, libc::SIGKILL) };
    }
}

fn down(dir: &Path) -> Result<()> {
    let file = state_file(dir);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("no lab is up ({} does not exist)", file.display());
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("{}", file.display())),
    };
    let state: State = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a lab state", file.display()))?;
    // The router first, then the agents (they withdraw and unpin), the controller last.
    for p in state.processes.iter().rev() {
        stop(p);
        println!("stopped {} (pid {})", p.what, p.pid);
    }
    let mut namespaces: Vec<&str> = state.nodes.iter().map(|(_, ns, _)| ns.as_str()).collect();
    namespaces.push(&state.client);
    namespaces.push(&state.segment);
    for ns in namespaces {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
    for pin in &state.pins {
        let _ = std::fs::remove_dir_all(pin);
    }
    // Only when empty: another lab's pins may live there.
    let _ = std::fs::remove_dir(Path::new(PINS).join(&state.segment));
    let _ = std::fs::remove_dir(PINS);
    let _ = std::fs::remove_dir_all(&state.config);
    for d in state.router.iter().flat_map(|(_, dirs)| dirs) {
        let _ = std::fs::remove_dir_all(d);
    }
    for p in &state.processes {
        let _ = std::fs::remove_file(&p.log);
    }
    std::fs::remove_file(&file)?;
    let _ = std::fs::remove_dir(dir);
    println!("the lab is down");
    Ok(())
}

fn status(dir: &Path) -> Result<()> {
    let file = state_file(dir);
    let Ok(text) = std::fs::read_to_string(&file) else {
        println!("no lab is up");
        return Ok(());
    };
    let state: State = serde_json::from_str(&text)?;
    for p in &state.processes {
        let up = if is_ours(p) { "running" } else { "NOT running" };
        println!(
            "{:<16} pid {:<8} {up}   log {}",
            p.what,
            p.pid,
            p.log.display()
        );
    }
    print_guide(dir, &state);
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if !privileged("xdplb-lab") {
        bail!("the lab needs root and a bpf filesystem (it creates network namespaces)");
    }
    match cli.action {
        Action::Up { config } => up(&cli.dir, &config),
        Action::Down => down(&cli.dir),
        Action::Status => status(&cli.dir),
    }
}
