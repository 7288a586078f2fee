//! MetalLB-compatible configuration.
//!
//! Layout, from the ground up (no module imports one above it):
//! - [`types`]: the metallb.io types; [`crds`]: their CustomResourceDefinitions.
//! - Value syntax, one parser each: [`address`] (pool entries), [`community`] (BGP communities).
//! - [`selector`]: which advertisement selects which pool, node and Service.
//! - [`manifest`]: reading YAML documents into [`manifest::Objects`]; [`memberlist`]: where the
//!   agents' membership key lives; [`passwords`]: the BGP passwords handed to the agents.
//! - [`l2mode`]: the Layer 2 mode of a Service; [`gtsm`]: a BGPPeer's TTL security.
//! - [`rules`] (the cross-object rules) and, above them, [`validate`]: MetalLB's validation as
//!   a [`Report`] of [`Problem`]s.
//! - [`settle`]: what to act on when validation refuses a reading.
//! - `arbitrary` (tests and the `arbitrary` feature): random configurations for fuzzing.

pub mod address;
#[cfg(any(test, feature = "arbitrary"))]
pub mod arbitrary;
pub mod community;
pub mod crds;
pub mod gtsm;
pub mod l2mode;
pub mod manifest;
pub mod memberlist;
pub mod passwords;
pub mod preempt;
pub mod rules;
pub mod selector;
pub mod settle;
pub mod types;
pub mod validate;

/// One problem with one object, as `validate` prints it: `Kind/name: field: reason`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub kind: String,
    pub name: String,
    /// JSON path of the field, e.g. `spec.addresses[1]`.
    pub field: String,
    pub reason: String,
}

impl Problem {
    pub fn new(
        kind: impl Into<String>,
        name: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            kind: kind.into(),
            name: name.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}: {}: {}",
            self.kind, self.name, self.field, self.reason
        )
    }
}

/// What validation found: errors make the configuration invalid; warnings (references to
/// pools or peers that do not exist, which MetalLB accepts) do not.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
    /// The errors that name an object not there (yet): a BFD profile, a password Secret, a
    /// community alias. Also in `errors`; MetalLB's admission webhook lets these pass, since
    /// one `kubectl apply` may create the referring object before the referred one.
    pub unresolved: Vec<Problem>,
}

impl Report {
    pub fn error(
        &mut self,
        kind: &str,
        name: &str,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) {
        self.errors.push(Problem::new(kind, name, field, reason));
    }

    /// An error naming an object that does not exist.
    pub fn unresolved(
        &mut self,
        kind: &str,
        name: &str,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) {
        let p = Problem::new(kind, name, field, reason);
        self.errors.push(p.clone());
        self.unresolved.push(p);
    }

    pub fn warning(
        &mut self,
        kind: &str,
        name: &str,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) {
        self.warnings.push(Problem::new(kind, name, field, reason));
    }
}
