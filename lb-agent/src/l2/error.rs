use std::{io, path::PathBuf};

/// Errors of the Layer 2 data path.
#[derive(Debug, thiserror::Error)]
pub enum L2Error {
    #[error("interface `{name}` not found")]
    NoSuchInterface { name: String },
    #[error("cannot read the MAC address of `{name}`")]
    InterfaceMac {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("`{path}` is not on a bpf filesystem (mount one with `mount -t bpf bpf /sys/fs/bpf`)")]
    NotBpffs { path: PathBuf },
    #[error("cannot prepare the pin directory `{path}`")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot load the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program `{name}`: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("program `{name}` is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("map `{name}` is missing from the eBPF object or pin directory")]
    MissingMap { name: &'static str },
    #[error("map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot attach XDP to `{iface}` in any mode: native: {native}; generic: {generic}")]
    Attach {
        iface: String,
        native: String,
        generic: String,
    },
    #[error("XDP link on `{iface}`: {source}")]
    Link {
        iface: String,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("cannot pin `{path}`: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("AF_PACKET socket on `{iface}`")]
    Socket {
        iface: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot count the possible CPUs ({what})")]
    Cpus {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("cannot set sysctl `{path}`")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
