//! MetalLB-compatible configuration: the metallb.io types ([`types`]), reading manifests
//! ([`manifest`]), pool addresses ([`address`]), MetalLB's validation rules ([`validate`]) and
//! the Layer 2 mode of a Service ([`l2mode`]).

pub mod address;
pub mod crds;
pub mod l2mode;
pub mod manifest;
pub mod rules;
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
