//! The ring's messages on the wire ([`super::verdicts`]): suspicions, verdicts, what a node
//! says of itself, and syncs, beside the heartbeats on the same port and under the same
//! secret.
//!
//! ```text
//! "XLB1" | version 4 | kind (1) | reserved (2) | sender name length (1) | sender name
//!        | body | HMAC-SHA256 of all the above (32)
//! kind 1 suspect, 2 verdict: status
//! kind 3 says:  name length (1) | name | run (8) | version (8) | length (2) | bytes
//! kind 4 sync:  count (2) | statuses | count (2) | sayings (as in "says")
//! status:       name length (1) | name | run (8) | seq (8) | dead (1: 0 or 1)
//! ```
//! A sync larger than one datagram goes in several, each a sync of its own: a receiver takes
//! each as it comes, and one lost is made up by the next sync its digest asks for.
//! Agents before version 4 refuse these datagrams as malformed (a counter, nothing else):
//! they are sent only to peers whose heartbeats carry a digest. Integers are big-endian;
//! decoding checks every length before reading and never panics.
use super::{
    claims::Claims,
    heartbeat::{MAX_NAME, Phase, mac},
    links::Links,
    verdicts::{Message, Said, Status},
};
use hmac::Mac;

const MAGIC: &[u8; 4] = b"XLB1";
pub const VERSION: u8 = 4;
const SUSPECT: u8 = 1;
const VERDICT: u8 = 2;
const SAYS: u8 = 3;
const SYNC: u8 = 4;
const TAG_LEN: usize = 32;
/// The largest datagram sent: under any link's MTU once IP and UDP headers are added.
pub const MAX_DATAGRAM: usize = 1400;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("{0} bytes is too short for a membership message")]
    Truncated(usize),
    #[error("not a membership message (bad magic or version)")]
    Magic,
    #[error("authentication failed (wrong secret or altered message)")]
    Auth,
    #[error("the secret cannot be used as an HMAC key")]
    Key,
    #[error("a node name is empty, too long or not UTF-8")]
    Name,
    #[error("message kind {0} is not known")]
    Kind(u8),
    #[error("the body is truncated or runs past the message")]
    Body,
    #[error("what the node says ({0} bytes) does not fit in one datagram")]
    TooLarge(usize),
    #[error("what the node says: {0}")]
    Saying(String),
}

/// What a node says of itself in ring mode: what its heartbeats say in a full mesh.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Saying {
    pub phase: Phase,
    pub links: Links,
    pub claims: Claims,
}

impl Saying {
    /// `phase (1: 0 joining, 1 active, 2 leaving) | links length (2) | links | claims`
    pub fn encode(&self) -> Vec<u8> {
        let mut links = Vec::new();
        self.links.encode(&mut links);
        let mut out = vec![match self.phase {
            Phase::Joining => 0,
            Phase::Active => 1,
            Phase::Leaving => 2,
        }];
        out.extend_from_slice(&(links.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
        out.extend_from_slice(&links);
        self.claims.encode(&mut out);
        out
    }

    pub fn decode(body: &[u8]) -> Result<Self, MessageError> {
        let mut r = Reader(body);
        let phase = match r.u8()? {
            0 => Phase::Joining,
            1 => Phase::Active,
            2 => Phase::Leaving,
            _ => return Err(MessageError::Saying("unknown phase".into())),
        };
        let len = usize::from(r.u16()?);
        let links = Links::decode(r.take(len)?).map_err(|e| MessageError::Saying(e.to_string()))?;
        let claims = Claims::decode(r.0).map_err(|e| MessageError::Saying(e.to_string()))?;
        Ok(Self {
            phase,
            links,
            claims,
        })
    }
}

/// Whether `datagram` is one of these messages rather than a heartbeat (looked at before
/// any check: the decoder checks everything).
pub fn is_message(datagram: &[u8]) -> bool {
    datagram.get(..4) == Some(MAGIC.as_slice()) && datagram.get(4) == Some(&VERSION)
}

fn sign(mut out: Vec<u8>, secret: &[u8]) -> Result<Vec<u8>, MessageError> {
    let mut m = mac(secret).map_err(|_| MessageError::Key)?;
    m.update(&out);
    out.extend_from_slice(&m.finalize().into_bytes());
    Ok(out)
}

fn name(out: &mut Vec<u8>, n: &str) -> Result<(), MessageError> {
    let b = n.as_bytes();
    if b.is_empty() || b.len() > MAX_NAME {
        return Err(MessageError::Name);
    }
    out.push(b.len() as u8);
    out.extend_from_slice(b);
    Ok(())
}

fn head(kind: u8, sender: &str) -> Result<Vec<u8>, MessageError> {
    let mut out = Vec::with_capacity(MAX_DATAGRAM);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[VERSION, kind, 0, 0]);
    name(&mut out, sender)?;
    Ok(out)
}

fn status(out: &mut Vec<u8>, subject: &str, s: &Status) -> Result<(), MessageError> {
    name(out, subject)?;
    out.extend_from_slice(&s.run.to_be_bytes());
    out.extend_from_slice(&s.seq.to_be_bytes());
    out.push(u8::from(s.dead));
    Ok(())
}

fn saying(out: &mut Vec<u8>, subject: &str, s: &Said) -> Result<(), MessageError> {
    let len = u16::try_from(s.body.len()).map_err(|_| MessageError::TooLarge(s.body.len()))?;
    name(out, subject)?;
    out.extend_from_slice(&s.run.to_be_bytes());
    out.extend_from_slice(&s.version.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.body);
    Ok(())
}

/// The datagrams carrying `message` from `sender`, signed with `secret`: one, or for a sync
/// as many as it takes, each under [`MAX_DATAGRAM`].
pub fn encode(
    sender: &str,
    message: &Message,
    secret: &[u8],
) -> Result<Vec<Vec<u8>>, MessageError> {
    let single = |kind: u8, body: &dyn Fn(&mut Vec<u8>) -> Result<(), MessageError>| {
        let mut out = head(kind, sender)?;
        body(&mut out)?;
        if out.len() + TAG_LEN > MAX_DATAGRAM {
            return Err(MessageError::TooLarge(out.len()));
        }
        Ok(vec![sign(out, secret)?])
    };
    match message {
        Message::Suspect { subject, status: s } => single(SUSPECT, &|o| status(o, subject, s)),
        Message::Verdict { subject, status: s } => single(VERDICT, &|o| status(o, subject, s)),
        Message::Says { subject, said } => single(SAYS, &|o| saying(o, subject, said)),
        Message::Sync { statuses, said } => sync(sender, statuses, said, secret),
    }
}

/// One sync datagram being filled: its statuses and its sayings, each counted.
#[derive(Default)]
struct Chunk {
    statuses: Vec<u8>,
    status_count: u16,
    sayings: Vec<u8>,
    saying_count: u16,
}

impl Chunk {
    /// Whether `more` bytes still fit beside the head, the two counts and the tag.
    fn fits(&self, head: usize, more: usize) -> bool {
        head + 2 + self.statuses.len() + 2 + self.sayings.len() + more + TAG_LEN <= MAX_DATAGRAM
    }

    fn finish(self, mut head: Vec<u8>, secret: &[u8]) -> Result<Vec<u8>, MessageError> {
        head.extend_from_slice(&self.status_count.to_be_bytes());
        head.extend_from_slice(&self.statuses);
        head.extend_from_slice(&self.saying_count.to_be_bytes());
        head.extend_from_slice(&self.sayings);
        sign(head, secret)
    }
}

fn sync(
    sender: &str,
    statuses: &[(String, Status)],
    said: &[(String, Said)],
    secret: &[u8],
) -> Result<Vec<Vec<u8>>, MessageError> {
    let head = head(SYNC, sender)?;
    let mut done = Vec::new();
    let mut c = Chunk::default();
    let mut entry = Vec::new();
    for (subject, s) in statuses {
        entry.clear();
        status(&mut entry, subject, s)?;
        if !c.fits(head.len(), entry.len()) {
            done.push(std::mem::take(&mut c).finish(head.clone(), secret)?);
        }
        c.statuses.extend_from_slice(&entry);
        c.status_count += 1;
    }
    for (subject, s) in said {
        entry.clear();
        saying(&mut entry, subject, s)?;
        if !c.fits(head.len(), entry.len()) {
            done.push(std::mem::take(&mut c).finish(head.clone(), secret)?);
            if !c.fits(head.len(), entry.len()) {
                return Err(MessageError::TooLarge(entry.len()));
            }
        }
        c.sayings.extend_from_slice(&entry);
        c.saying_count += 1;
    }
    done.push(c.finish(head, secret)?);
    Ok(done)
}

/// Reads a body front to back, every length checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MessageError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(MessageError::Body)?;
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, MessageError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, MessageError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> Result<u64, MessageError> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| MessageError::Body)?;
        Ok(u64::from_be_bytes(b))
    }

    fn name(&mut self) -> Result<String, MessageError> {
        let len = usize::from(self.u8()?);
        if len == 0 {
            return Err(MessageError::Name);
        }
        let b = self.take(len)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| MessageError::Name)
    }

    fn status(&mut self) -> Result<(String, Status), MessageError> {
        let subject = self.name()?;
        let run = self.u64()?;
        let seq = self.u64()?;
        let dead = match self.u8()? {
            0 => false,
            1 => true,
            _ => return Err(MessageError::Body),
        };
        Ok((subject, Status { run, seq, dead }))
    }

    fn saying(&mut self) -> Result<(String, Said), MessageError> {
        let subject = self.name()?;
        let run = self.u64()?;
        let version = self.u64()?;
        let len = usize::from(self.u16()?);
        let body = self.take(len)?.to_vec();
        Ok((subject, Said { run, version, body }))
    }

    fn end(&self) -> Result<(), MessageError> {
        match self.0.is_empty() {
            true => Ok(()),
            false => Err(MessageError::Body),
        }
    }
}

/// Checks and reads a datagram: its sender and message.
pub fn decode(datagram: &[u8], secret: &[u8]) -> Result<(String, Message), MessageError> {
    if datagram.len() < 9 + TAG_LEN {
        return Err(MessageError::Truncated(datagram.len()));
    }
    if !is_message(datagram) {
        return Err(MessageError::Magic);
    }
    let (body, tag) = datagram.split_at(datagram.len() - TAG_LEN);
    let mut m = mac(secret).map_err(|_| MessageError::Key)?;
    m.update(body);
    m.verify_slice(tag).map_err(|_| MessageError::Auth)?;
    let mut r = Reader(body);
    r.take(5)?;
    let kind = r.u8()?;
    r.take(2)?;
    let sender = r.name()?;
    let message = match kind {
        SUSPECT => {
            let (subject, status) = r.status()?;
            Message::Suspect { subject, status }
        }
        VERDICT => {
            let (subject, status) = r.status()?;
            Message::Verdict { subject, status }
        }
        SAYS => {
            let (subject, said) = r.saying()?;
            Message::Says { subject, said }
        }
        SYNC => {
            let statuses = (0..r.u16()?)
                .map(|_| r.status())
                .collect::<Result<Vec<_>, _>>()?;
            let said = (0..r.u16()?)
                .map(|_| r.saying())
                .collect::<Result<Vec<_>, _>>()?;
            Message::Sync { statuses, said }
        }
        other => return Err(MessageError::Kind(other)),
    };
    r.end()?;
    Ok((sender, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a shared secret from DIR/secret";

    fn st(run: u64, seq: u64, dead: bool) -> Status {
        Status { run, seq, dead }
    }

    fn samples() -> Vec<Message> {
        vec![
            Message::Suspect {
                subject: "node-b".into(),
                status: st(7, 41, true),
            },
            Message::Verdict {
                subject: "node-c".into(),
                status: st(u64::MAX, 0, false),
            },
            Message::Says {
                subject: "node-a".into(),
                said: Said {
                    run: 9,
                    version: 3,
                    body: vec![1, 2, 3, 0, 255],
                },
            },
            Message::Sync {
                statuses: vec![
                    ("n1".into(), st(1, 2, true)),
                    ("n2".into(), st(3, 4, false)),
                ],
                said: vec![(
                    "n1".into(),
                    Said {
                        run: 1,
                        version: 1,
                        body: Vec::new(),
                    },
                )],
            },
            Message::Sync {
                statuses: Vec::new(),
                said: Vec::new(),
            },
        ]
    }

    #[test]
    fn a_saying_round_trips_and_refuses_garbage() {
        let s = Saying {
            phase: Phase::Joining,
            links: Links::new([super::super::links::Link {
                name: "eth1".into(),
                nets: vec!["10.0.1.0/24".parse().expect("net")],
            }]),
            claims: Claims::new(["10.0.1.7".parse().expect("ip")]).unwrap_or_else(|(c, _)| c),
        };
        assert_eq!(Saying::decode(&s.encode()), Ok(s.clone()));
        assert_eq!(
            Saying::decode(&Saying::default().encode()),
            Ok(Saying::default())
        );
        let wire = s.encode();
        for len in 0..3 {
            assert!(Saying::decode(&wire[..len]).is_err());
        }
        let mut bad = wire.clone();
        bad[0] = 9;
        assert!(Saying::decode(&bad).is_err());
    }

    #[test]
    fn every_kind_round_trips() {
        for m in samples() {
            let wire = encode("node-a", &m, SECRET).expect("encode");
            assert_eq!(wire.len(), 1);
            assert!(is_message(&wire[0]));
            assert_eq!(decode(&wire[0], SECRET), Ok(("node-a".to_owned(), m)));
        }
    }

    #[test]
    fn a_thousand_node_sync_goes_in_datagrams_that_fit_and_add_up_to_it() {
        let statuses: Vec<(String, Status)> = (0..1000)
            .map(|i| {
                (
                    format!("worker-{i:04}.rack-{}.example.com", i % 40),
                    st(i, i * 3, i % 7 == 0),
                )
            })
            .collect();
        let said: Vec<(String, Said)> = (0..1000)
            .map(|i| {
                (
                    format!("worker-{i:04}.rack-{}.example.com", i % 40),
                    Said {
                        run: i,
                        version: 2,
                        body: vec![i as u8; 60],
                    },
                )
            })
            .collect();
        let m = Message::Sync {
            statuses: statuses.clone(),
            said: said.clone(),
        };
        let wire = encode("me", &m, SECRET).expect("encode");
        assert!(wire.len() > 50, "{} datagrams", wire.len());
        let (mut got_s, mut got_x) = (Vec::new(), Vec::new());
        for d in &wire {
            assert!(d.len() <= MAX_DATAGRAM, "{} bytes", d.len());
            let Ok((_, Message::Sync { statuses, said })) = decode(d, SECRET) else {
                panic!("a chunk is not a sync");
            };
            got_s.extend(statuses);
            got_x.extend(said);
        }
        assert_eq!((got_s, got_x), (statuses, said));
    }

    #[test]
    fn any_altered_byte_truncation_or_other_secret_is_refused() {
        for m in samples() {
            let wire = encode("node-a", &m, SECRET).expect("encode").remove(0);
            assert_eq!(decode(&wire, b"another secret"), Err(MessageError::Auth));
            for i in 0..wire.len() {
                let mut bad = wire.clone();
                bad[i] ^= 0x01;
                assert!(decode(&bad, SECRET).is_err(), "byte {i} altered, accepted");
            }
            for len in 0..wire.len() {
                assert!(
                    decode(&wire[..len], SECRET).is_err(),
                    "{len} bytes accepted"
                );
            }
        }
    }

    #[test]
    fn what_does_not_fit_is_an_error_not_a_datagram() {
        let m = Message::Says {
            subject: "n".into(),
            said: Said {
                run: 1,
                version: 1,
                body: vec![0; MAX_DATAGRAM],
            },
        };
        assert!(matches!(
            encode("n", &m, SECRET),
            Err(MessageError::TooLarge(_))
        ));
        let m = Message::Verdict {
            subject: String::new(),
            status: st(1, 1, true),
        };
        assert_eq!(encode("n", &m, SECRET), Err(MessageError::Name));
    }

    /// Signed garbage: authentic, so the body parser itself is what must not panic.
    fn signed(body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(VERSION);
        out.extend_from_slice(body);
        sign(out, SECRET).expect("sign")
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        #[test]
        fn random_datagrams_never_panic(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        ) {
            let _ = decode(&data, SECRET);
            let _ = decode(&signed(&data), SECRET);
            let _ = Saying::decode(&data);
        }
    }
}
