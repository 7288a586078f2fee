//! The [`Facts`] of a standalone directory: its manifests, and the controller's
//! `status/allocations.yaml` standing in for the Services' status. The agents report to
//! nobody there, so who announces is what the election says when every candidate runs.
use std::path::Path;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
use kube::ResourceExt;
use lb_controller::{allocations, config::manifest};

use super::Facts;

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error(transparent)]
    Load(#[from] manifest::LoadError),
    #[error(transparent)]
    Allocations(#[from] allocations::ReadError),
}

/// Reads `dir` as `lb-controller run --config-dir` does (unknown fields dropped).
pub fn gather(dir: &Path, lb_class: Option<String>) -> Result<Facts, DirError> {
    let loaded = manifest::load_with(&[dir.to_path_buf()], manifest::Strictness::Lenient)?;
    let written = allocations::read(dir)?;
    let mut objects = loaded.objects;
    for svc in &mut objects.services {
        let key = format!(
            "{}/{}",
            svc.namespace().unwrap_or_else(|| "default".into()),
            svc.name_any()
        );
        let Some(entry) = written.allocations.iter().find(|e| e.service == key) else {
            continue;
        };
        let ingress = entry
            .ips
            .iter()
            .map(|ip| LoadBalancerIngress {
                ip: Some(ip.to_string()),
                ..LoadBalancerIngress::default()
            })
            .collect();
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(ingress),
            }),
            ..ServiceStatus::default()
        });
    }
    Ok(Facts {
        objects,
        lb_class,
        config_problems: loaded.errors.iter().map(ToString::to_string).collect(),
        ..Facts::default()
    })
}
