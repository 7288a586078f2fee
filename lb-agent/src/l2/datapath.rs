//! Loading, attaching and pinning the XDP programs, and adopting what a previous agent pinned.
//!
//! # Guarantees
//! - Maps are pinned by name under the pin directory and reused when present, so the VIP entries a
//!   previous agent wrote keep answering while this one starts.
//! - An interface that already has a pinned link gets the new program through an atomic link
//!   update (`bpf_link_update`): there is no instant without a program on the interface.
//! - Links stay pinned when the agent exits or crashes; only [`Datapath::detach`] removes them.
//!
//! # Caveats
//! A pinned map whose key or value size differs from this build's (an older layout) is replaced
//! by an empty one; the agent then writes its desired entries again.
use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::MapData,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use aya_log::EbpfLogger;
use lb_common::{
    ClientKey, ClientValue, CounterBlock, LINK_PIN_PREFIX, MAP_CLIENTS, MAP_COUNTERS, MAP_LEASE,
    MAP_SLOTS, MAP_VIP_STATS, MAP_VIP4, MAP_VIP6, PROG_XDP_L2, PROG_XDP_PASS, SlotBits, Vip4Key,
    Vip6Key, VipStats, VipStatsKey, VipValue,
};
use tracing::{info, warn};

use super::L2Error;

/// How a program ended up on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// Driver (native) mode.
    Native,
    /// Generic (SKB) mode, after native mode was refused.
    Generic,
    /// A link pinned by a previous agent was taken over and now runs this build's program.
    Adopted,
}

impl std::fmt::Display for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Attachment::Native => "xdp native",
            Attachment::Generic => "xdp generic",
            Attachment::Adopted => "xdp (adopted pinned link)",
        })
    }
}

/// Which XDP modes to try, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpModes {
    /// Native, then generic.
    NativeThenGeneric,
    NativeOnly,
    GenericOnly,
}

/// The loaded object and the links this process holds.
pub struct Datapath {
    ebpf: Ebpf,
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    bpffs: PathBuf,
    links: Vec<FdLink>,
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Creates `dir` (and parents) and checks that it is on a bpf filesystem.
pub fn prepare_pin_dir(dir: &Path) -> Result<(), L2Error> {
    fs::create_dir_all(dir).map_err(|source| L2Error::PinDir {
        path: dir.to_owned(),
        source,
    })?;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| {
        L2Error::NotBpffs {
            path: dir.to_owned(),
        }
    })?;
    // SAFETY: statfs is plain data; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 || st.f_type as i64 != BPF_FS_MAGIC {
        return Err(L2Error::NotBpffs {
            path: dir.to_owned(),
        });
    }
    Ok(())
}

/// Removes pinned maps whose layout this build cannot read (see the module's caveats).
fn drop_incompatible_pins(bpffs: &Path) {
    let expected = [
        (MAP_VIP4, size_of::<Vip4Key>(), size_of::<VipValue>()),
        (MAP_VIP6, size_of::<Vip6Key>(), size_of::<VipValue>()),
        (MAP_COUNTERS, 4, size_of::<CounterBlock>()),
        (MAP_LEASE, 4, 8),
        (
            MAP_VIP_STATS,
            size_of::<VipStatsKey>(),
            size_of::<VipStats>(),
        ),
        (MAP_SLOTS, size_of::<VipStatsKey>(), size_of::<SlotBits>()),
        (
            MAP_CLIENTS,
            size_of::<ClientKey>(),
            size_of::<ClientValue>(),
        ),
    ];
    for (name, key, value) in expected {
        let path = bpffs.join(name);
        let Ok(map) = MapData::from_pin(&path) else {
            continue;
        };
        let compatible = map
            .info()
            .map(|i| i.key_size() as usize == key && i.value_size() as usize == value)
            .unwrap_or(false);
        if !compatible {
            warn!(map = name, path = %path.display(), "pinned map has another layout; replacing it");
            let _ = fs::remove_file(&path);
        }
    }
}

fn remove_if_exists(path: &Path) -> Result<(), L2Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(L2Error::PinDir {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Whether any interface's link is pinned under `bpffs` (another agent's, say).
pub fn any_link_pinned(bpffs: &Path) -> bool {
    fs::read_dir(bpffs)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with(LINK_PIN_PREFIX))
        })
        .unwrap_or(false)
}

/// Pin path of the `xdp_l2` link on `ifname`.
pub fn link_pin(bpffs: &Path, ifname: &str) -> PathBuf {
    bpffs.join(format!("{LINK_PIN_PREFIX}{ifname}"))
}

impl Datapath {
    /// Loads the embedded object, reusing the maps pinned under `bpffs`, and pins `xdp_l2`.
    ///
    /// `log_level` is the most verbose aya-log level the program emits (1 = error .. 5 = trace);
    /// levels above it compile to nothing once the verifier sees the constant.
    pub fn load(bpffs: &Path, log_level: u8) -> Result<Self, L2Error> {
        prepare_pin_dir(bpffs)?;
        drop_incompatible_pins(bpffs);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(bpffs)
            .override_global("AYA_LOG_LEVEL", &log_level, false)
            .load(crate::ebpf_object())
            .map_err(L2Error::Load)?;
        // The logger takes its ring buffer out of the object, so it must exist before the
        // programs load, and live as long as they run.
        let logger = match EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!(error = %e, "XDP program logs unavailable");
                None
            }
        };
        for name in [PROG_XDP_L2, PROG_XDP_PASS] {
            program(&mut ebpf, name)?
                .load()
                .map_err(|source| L2Error::Program { name, source })?;
        }
        let prog_pin = bpffs.join(PROG_XDP_L2);
        remove_if_exists(&prog_pin)?;
        program(&mut ebpf, PROG_XDP_L2)?
            .pin(&prog_pin)
            .map_err(|source| L2Error::Pin {
                path: prog_pin.clone(),
                source,
            })?;
        Ok(Self {
            ebpf,
            logger,
            bpffs: bpffs.to_owned(),
            links: Vec::new(),
        })
    }

    /// The loaded object, e.g. for the aya-log reader or `BPF_PROG_TEST_RUN`.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The aya-log reader, to be polled for the program's log records.
    pub fn take_logger(&mut self) -> Option<EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// The pin directory.
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// The loaded program `name` (`xdp_l2` or `xdp_pass`).
    pub fn program(&mut self, name: &'static str) -> Result<&mut Xdp, L2Error> {
        program(&mut self.ebpf, name)
    }

    /// Puts `xdp_l2` on `ifname`, adopting a pinned link when there is one, and pins the link.
    pub fn attach_l2(&mut self, ifname: &str, modes: XdpModes) -> Result<Attachment, L2Error> {
        let pin = link_pin(&self.bpffs, ifname);
        if pin.exists() {
            match self.adopt(PROG_XDP_L2, ifname, &pin) {
                Ok(()) => return Ok(Attachment::Adopted),
                Err(e) => {
                    warn!(iface = ifname, error = %e, "pinned link unusable; attaching afresh");
                    remove_if_exists(&pin)?;
                }
            }
        }
        self.attach_new(PROG_XDP_L2, ifname, modes, Some(&pin))
    }

    /// Puts `xdp_pass` on `ifname` (for veth peers in labs and tests), pinned at `pin` if given.
    pub fn attach_pass(
        &mut self,
        ifname: &str,
        modes: XdpModes,
        pin: Option<&Path>,
    ) -> Result<Attachment, L2Error> {
        self.attach_new(PROG_XDP_PASS, ifname, modes, pin)
    }

    fn adopt(&mut self, name: &'static str, ifname: &str, pin: &Path) -> Result<(), L2Error> {
        let link_err = |source| L2Error::Link {
            iface: ifname.to_owned(),
            source,
        };
        let pinned = PinnedLink::from_pin(pin).map_err(link_err)?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(link_err)?;
        let prog = program(&mut self.ebpf, name)?;
        let id = prog
            .attach_to_link(link)
            .map_err(|source| L2Error::Program { name, source })?;
        let link = prog
            .take_link(id)
            .map_err(|source| L2Error::Program { name, source })?;
        self.links.push(FdLink::try_from(link).map_err(link_err)?);
        info!(iface = ifname, pin = %pin.display(), "adopted pinned XDP link");
        Ok(())
    }

    fn attach_new(
        &mut self,
        name: &'static str,
        ifname: &str,
        modes: XdpModes,
        pin: Option<&Path>,
    ) -> Result<Attachment, L2Error> {
        let prog = program(&mut self.ebpf, name)?;
        let tries: &[(XdpMode, Attachment)] = match modes {
            XdpModes::NativeThenGeneric => &[
                (XdpMode::Driver, Attachment::Native),
                (XdpMode::Skb, Attachment::Generic),
            ],
            XdpModes::NativeOnly => &[(XdpMode::Driver, Attachment::Native)],
            XdpModes::GenericOnly => &[(XdpMode::Skb, Attachment::Generic)],
        };
        let mut failures = Vec::new();
        for (mode, attachment) in tries {
            match prog.attach(ifname, *mode) {
                Ok(id) => {
                    let link = prog
                        .take_link(id)
                        .map_err(|source| L2Error::Program { name, source })?;
                    let link = FdLink::try_from(link).map_err(|source| L2Error::Link {
                        iface: ifname.to_owned(),
                        source,
                    })?;
                    if let Some(pin) = pin {
                        // The pin keeps the link (and so the attachment) alive past this process.
                        link.pin(pin).map_err(|source| L2Error::Pin {
                            path: pin.to_owned(),
                            source,
                        })?;
                    } else {
                        self.links.push(link);
                    }
                    return Ok(*attachment);
                }
                Err(aya::programs::ProgramError::UnknownInterface { name }) => {
                    return Err(L2Error::NoSuchInterface { name });
                }
                Err(e) => failures.push((attachment, e.to_string())),
            }
        }
        let find = |a: Attachment| {
            failures
                .iter()
                .find(|(b, _)| **b == a)
                .map(|(_, e)| e.clone())
                .unwrap_or_else(|| "not tried".to_owned())
        };
        Err(L2Error::Attach {
            iface: ifname.to_owned(),
            native: find(Attachment::Native),
            generic: find(Attachment::Generic),
        })
    }

    /// Detaches `xdp_l2` from `ifname` by removing its pinned link (a no-op when there is none).
    pub fn detach(bpffs: &Path, ifname: &str) -> Result<(), L2Error> {
        remove_if_exists(&link_pin(bpffs, ifname))
    }

    /// Removes the program and map pins, for a full withdrawal once no link is left.
    pub fn unpin_all(bpffs: &Path) -> Result<(), L2Error> {
        for name in [
            PROG_XDP_L2,
            MAP_VIP4,
            MAP_VIP6,
            MAP_COUNTERS,
            MAP_LEASE,
            MAP_VIP_STATS,
            MAP_SLOTS,
            MAP_CLIENTS,
        ] {
            remove_if_exists(&bpffs.join(name))?;
        }
        Ok(())
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, L2Error> {
    ebpf.program_mut(name)
        .ok_or(L2Error::MissingProgram { name })?
        .try_into()
        .map_err(|source| L2Error::Program { name, source })
}
