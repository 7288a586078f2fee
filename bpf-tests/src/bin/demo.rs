//! `cargo xtask demo`: a short tour of what xdplb does today, in a throwaway lab.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::Command,
};

use anyhow::{Context, Result, bail};
use bpf_tests::{
    PinDir,
    agent::{Agent, agent_bin},
    netns::{Link, mac_str},
};

const VIP4: &str = "10.200.0.100";
const VIP6: &str = "fd00:200::100";

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

    let pins = PinDir::new("demo");
    let pin_dir = pins.path().to_str().context("utf-8 pin path")?.to_owned();
    say(
        "2. Announce two VIPs from the node",
        &format!(
            "lb-agent announce --interface {} --vip {VIP4},{VIP6} --bpffs {pin_dir}\n\
             Static mode: no controller, no peers. The agent loads the XDP program, pins it\n\
             with its maps and link under the bpffs directory, writes the VIPs into the maps,\n\
             puts them on the local device xdplb0 so the node accepts their traffic, and\n\
             sends gratuitous ARP / unsolicited NA so neighbours learn the MAC at once.",
            link.node_if
        ),
    );
    let agent = Agent::announce(
        &link.node,
        &link.node_if,
        &format!("{VIP4},{VIP6}"),
        pins.path(),
        &[],
    );
    for line in agent.log_text().lines() {
        println!("   | {line}");
    }

    say("3. The client asks who has the IPv4 VIP (real arping)", "");
    show(
        link.client
            .exec("arping")
            .args(["-c", "3", "-w", "3", "-I", &link.client_if, VIP4]),
    )?;
    say("4. The client solicits the IPv6 VIP (real ndisc6)", "");
    show(
        link.client
            .exec("ndisc6")
            .args(["-1", "-r", "3", "-w", "500", VIP6, &link.client_if]),
    )?;
    say(
        "5. An address that is not a VIP gets no answer from us",
        "arping 10.200.0.55: the program passes the request to the kernel, which has no such address.",
    );
    let none = link.arping("10.200.0.55", 1);
    println!("   replies: {}", none.len());

    say(
        "6. The VIP really serves: a TCP connection from the client reaches the node",
        "The node listens on the VIP (it is on xdplb0); the client connects over the veth.",
    );
    let listener = link
        .node
        .within(|| TcpListener::bind((VIP4, 8080)))
        .context("listen on the VIP")?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut conn, peer) = listener.accept()?;
        let mut request = [0u8; 256];
        let n = conn.read(&mut request)?;
        let first = String::from_utf8_lossy(&request[..n]);
        let body = format!("hello from the node owning {VIP4}\n");
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
    let response = link.client.within(|| -> std::io::Result<String> {
        let mut stream = TcpStream::connect((VIP4, 8080))?;
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
        "7. What the data path holds: lb-agent maps",
        "Counters are per CPU in the kernel; these are the totals.",
    );
    show(
        link.node
            .enter(agent_bin().to_str().context("utf-8")?)
            .args(["maps", "--bpffs", &pin_dir]),
    )?;
    say(
        "8. The same with bpftool",
        &format!("bpftool map dump pinned {pin_dir}/vip4"),
    );
    show(Command::new("bpftool").args(["map", "dump", "pinned", &format!("{pin_dir}/vip4")]))?;

    say(
        "9. Withdraw",
        "SIGTERM: the agent removes its VIPs from the maps and from xdplb0, detaches and unpins.",
    );
    agent.stop();
    let after = link.arping(VIP4, 1);
    println!("   arping {VIP4} after withdrawal: {} replies", after.len());

    say(
        "Done",
        "The lab is gone with this process (namespaces and pins are removed on exit).\n\
         Next: the controller (MetalLB configuration, IPAM) and multi-node failover.",
    );
    Ok(())
}
