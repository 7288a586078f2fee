//! `cargo xtask demo`: a short tour of what xdplb does today, in a throwaway lab.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bpf_tests::{
    PinDir,
    agent::{Agent, agent_bin, workspace_bin},
    netns::{Link, mac_str},
};
use lb_controller::{metrics::Metrics, standalone::Standalone};

/// The example configuration the demo runs from (relative to the workspace root).
const EXAMPLE: &str = "deploy/examples/standalone";

fn say(title: &str, text: &str) {
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        println!("\n\x1b[1m== {title}\x1b[0m");
    } else {
        println!("\n== {title}");
    }
    for line in text.lines() {
        println!("   {line}");
    }
}

fn show(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in text.lines() {
        println!("   | {line}");
    }
    Ok(text)
}

/// Step 2: the standalone controller allocates from the example directory. Returns web's
/// IPv4 and IPv6 addresses.
fn controller_step() -> Result<(String, String)> {
    let root = std::env::current_dir().context("current directory")?;
    let example = root.join(EXAMPLE);
    let dir = std::env::temp_dir().join(bpf_tests::unique("xdplb-demo-config"));
    std::fs::create_dir_all(&dir).context("config directory")?;
    for file in ["pool.yaml", "services.yaml"] {
        std::fs::copy(example.join(file), dir.join(file))
            .with_context(|| format!("copy {EXAMPLE}/{file}"))?;
    }
    say(
        "2. The controller hands out addresses",
        &format!(
            "{EXAMPLE}/ holds MetalLB's own objects: an IPAddressPool\n\
             with ten IPv4 and ten IPv6 addresses and an L2Advertisement, and two Services:\n\
             `web` (dual-stack) and `dns` (asks for 10.200.0.105). First, lb-controller\n\
             validate checks them with MetalLB's rules:"
        ),
    );
    let controller = workspace_bin("lb-controller");
    show(Command::new(&controller).arg("validate").arg(&dir))?;
    println!(
        "\n   Then lb-controller run --config-dir watches the directory and writes\n   \
         status/allocations.yaml (atomically) for the agents to read:"
    );
    let mut child = Command::new(&controller)
        .args(["run", "--metrics-addr", "127.0.0.1:0", "--config-dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start lb-controller")?;
    let reader = Standalone::new(dir.clone(), None, Arc::new(Metrics::default()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.allocations_path().exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(reader.allocations_path())
        .context("the controller wrote no allocations")?;
    for line in text.lines() {
        println!("   | {line}");
    }
    let allocations = reader.read_allocations();
    let _ = std::fs::remove_dir_all(&dir);
    let web = allocations
        .allocations
        .iter()
        .find(|e| e.service == "default/web")
        .context("no allocation for default/web")?;
    let v4 = web.ips.iter().find(|ip| ip.is_ipv4());
    let v6 = web.ips.iter().find(|ip| ip.is_ipv6());
    match (v4, v6) {
        (Some(v4), Some(v6)) => Ok((v4.to_string(), v6.to_string())),
        _ => bail!("default/web did not get both families: {:?}", web.ips),
    }
}

fn main() -> Result<()> {
    if !bpf_tests::privileged("xdplb-demo") {
        bail!("the demo needs root and a bpf filesystem (it creates network namespaces)");
    }
    say(
        "xdplb",
        "A bare-metal LoadBalancer whose Layer 2 answers come from XDP: ARP and IPv6 neighbour\n\
         solicitations for a VIP are answered in the NIC driver, before the kernel allocates\n\
         anything, from a BPF map the agent keeps current.",
    );

    say(
        "1. A lab",
        "Two network namespaces joined by a veth pair stand for a client and a node on one L2\n\
         segment: 10.200.0.0/24 and fd00:200::/64. (On a veth, native XDP replies only arrive if\n\
         the other end runs an XDP program too, so the client end gets a pass-through one;\n\
         real NICs need nothing of the sort.)",
    );
    let link = Link::new("demo");
    let pass_pins = PinDir::new("demopass");
    link.pass_on_client(&pass_pins);
    let node_mac = mac_str(&link.node_mac());
    println!("   node interface {} has MAC {node_mac}", link.node_if);

    let (vip4, vip6) = controller_step()?;
    // Lives as long as the demo; the namespace helpers run closures on threads of their own.
    let (vip4, vip6): (&'static str, &'static str) = (
        Box::leak(vip4.into_boxed_str()),
        Box::leak(vip6.into_boxed_str()),
    );

    let pins = PinDir::new("demo");
    let pin_dir = pins.path().to_str().context("utf-8 pin path")?.to_owned();
    say(
        "3. Announce web's two addresses from the node",
        &format!(
            "lb-agent announce --interface {} --vip {vip4},{vip6} --bpffs {pin_dir}\n\
             Static mode, one node (the multi-node agent that follows the allocations file\n\
             and elects an owner per VIP is the next step of the project). The agent loads the\n\
             XDP program, pins it with its maps and link under the bpffs directory, writes the\n\
             VIPs into the maps, puts them on the local device xdplb0 so the node accepts their\n\
             traffic, and sends gratuitous ARP / unsolicited NA so neighbours learn the MAC.",
            link.node_if
        ),
    );
    let agent = Agent::announce(
        &link.node,
        &link.node_if,
        &format!("{vip4},{vip6}"),
        pins.path(),
        &[],
    );
    for line in agent.log_text().lines() {
        println!("   | {line}");
    }

    say("4. The client asks who has the IPv4 VIP (real arping)", "");
    show(
        link.client
            .exec("arping")
            .args(["-c", "3", "-w", "3", "-I", &link.client_if, vip4]),
    )?;
    say("5. The client solicits the IPv6 VIP (real ndisc6)", "");
    show(
        link.client
            .exec("ndisc6")
            .args(["-1", "-r", "3", "-w", "500", vip6, &link.client_if]),
    )?;
    say(
        "6. An address that is not a VIP gets no answer from us",
        "arping 10.200.0.55: the program passes the request to the kernel, which has no such address.",
    );
    let none = link.arping("10.200.0.55", 1);
    println!("   replies: {}", none.len());

    say(
        "7. The VIP really serves: a TCP connection from the client reaches the node",
        "The node listens on the VIP (it is on xdplb0); the client connects over the veth.",
    );
    let listener = link
        .node
        .within(move || TcpListener::bind((vip4, 8080)))
        .context("listen on the VIP")?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut conn, peer) = listener.accept()?;
        let mut request = [0u8; 256];
        let n = conn.read(&mut request)?;
        let first = String::from_utf8_lossy(&request[..n]);
        let body = format!("hello from the node owning {vip4}\n");
        write!(
            conn,
            "HTTP/1.0 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )?;
        println!(
            "   node got {:?} from {peer}",
            first.lines().next().unwrap_or("")
        );
        Ok(())
    });
    let response = link.client.within(move || -> std::io::Result<String> {
        let mut stream = TcpStream::connect((vip4, 8080))?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        stream.read_to_string(&mut out)?;
        Ok(out)
    })?;
    let _ = server.join();
    for line in response.lines() {
        println!("   | {line}");
    }

    say(
        "8. What the data path holds: lb-agent maps",
        "Counters are per CPU in the kernel; these are the totals.",
    );
    show(
        link.node
            .enter(agent_bin().to_str().context("utf-8")?)
            .args(["maps", "--bpffs", &pin_dir]),
    )?;
    say(
        "9. The same with bpftool",
        &format!("bpftool map dump pinned {pin_dir}/vip4"),
    );
    show(Command::new("bpftool").args(["map", "dump", "pinned", &format!("{pin_dir}/vip4")]))?;

    say(
        "10. Withdraw",
        "SIGTERM: the agent removes its VIPs from the maps and from xdplb0, detaches and unpins.",
    );
    agent.stop();
    let after = link.arping(vip4, 1);
    println!("   arping {vip4} after withdrawal: {} replies", after.len());

    say(
        "Done",
        "The lab is gone with this process (namespaces and pins are removed on exit).\n\
         Next: the multi-node agent, with an owner elected per VIP and sub-second failover.",
    );
    Ok(())
}
