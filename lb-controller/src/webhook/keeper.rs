//! Keeps the webhook's certificate Secret and the `caBundle` of the ValidatingWebhookConfiguration
//! current: reads the Secret (from the reflector), asks [`certs::assess`], writes what
//! [`certs::issue`] gives, and hands the serving key to the TLS server. Every replica runs
//! one; two racing over a write meet a 409 and the loser takes the winner's Secret.
use std::time::SystemTime;

use crate::tls::{
    ServingKey,
    certs::{self, Bundle, Verdict},
};
use k8s_openapi::{
    ByteString,
    api::{admissionregistration::v1::ValidatingWebhookConfiguration, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, Client, ResourceExt, api::PostParams};

/// Where the keeper writes.
#[derive(Clone, Debug)]
pub struct Names {
    pub namespace: String,
    pub secret: String,
    pub configuration: String,
    /// The DNS names the serving certificate must carry.
    pub dns: Vec<String>,
}

impl Names {
    /// The names a Service `service` in `namespace` is reached by.
    pub fn dns_of(service: &str, namespace: &str) -> Vec<String> {
        vec![
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
            format!("{service}.{namespace}"),
            service.to_owned(),
        ]
    }
}

/// One round: the Secret as the reflector holds it (`current`) brought up to date, the serving
/// key set, the `caBundle` written where it differs. Errors are for the caller to log and
/// retry; the server goes on with the key it has.
pub async fn round(
    client: &Client,
    names: &Names,
    current: Option<&Secret>,
    serving: &ServingKey,
) -> anyhow::Result<()> {
    let bundle = current
        .and_then(|s| s.data.as_ref())
        .and_then(Bundle::from_data);
    let now = SystemTime::now();
    let verdict = certs::assess(bundle.as_ref(), &names.dns, now);
    let bundle = match (&verdict, bundle) {
        (Verdict::Keep, Some(b)) => b,
        (why, old) => {
            let reason = match why {
                Verdict::NewLeaf(r) | Verdict::NewAll(r) => r.as_str(),
                Verdict::Keep => "",
            };
            let new = certs::issue(old.as_ref(), &verdict, &names.dns, now)?;
            write(client, names, current, &new).await?;
            tracing::info!(secret = %names.secret, reason, "issued the webhook's serving certificate");
            new
        }
    };
    serving.set(certs::serving_key(&bundle.tls_crt, &bundle.tls_key)?);
    publish_ca(client, &names.configuration, &bundle.ca_crt).await
}

async fn write(
    client: &Client,
    names: &Names,
    current: Option<&Secret>,
    bundle: &Bundle,
) -> anyhow::Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    let mut secret = current.cloned().unwrap_or_else(|| Secret {
        metadata: ObjectMeta {
            name: Some(names.secret.clone()),
            namespace: Some(names.namespace.clone()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        ..Secret::default()
    });
    secret
        .data
        .get_or_insert_with(Default::default)
        .extend(bundle.to_data());
    let result = match current {
        None => api.create(&PostParams::default(), &secret).await,
        Some(_) => {
            api.replace(&names.secret, &PostParams::default(), &secret)
                .await
        }
    };
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(anyhow::anyhow!(
            "Secret {}/{} was written by another replica meanwhile; taking theirs next",
            names.namespace,
            names.secret
        )),
        Err(e) => Err(anyhow::anyhow!(
            "writing Secret {}/{}: {e}",
            names.namespace,
            names.secret
        )),
    }
}

/// Writes `ca` into every webhook of the configuration whose `caBundle` differs. A missing
/// configuration is not an error: nothing calls the webhook then.
async fn publish_ca(client: &Client, name: &str, ca: &str) -> anyhow::Result<()> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let Some(mut config) = api.get_opt(name).await? else {
        tracing::debug!(
            configuration = name,
            "no ValidatingWebhookConfiguration to publish the CA in"
        );
        return Ok(());
    };
    let wanted = ByteString(ca.as_bytes().to_vec());
    let mut changed = false;
    for hook in config.webhooks.iter_mut().flatten() {
        if hook.client_config.ca_bundle.as_ref() != Some(&wanted) {
            hook.client_config.ca_bundle = Some(wanted.clone());
            changed = true;
        }
    }
    if !changed {
        return Ok(());
    }
    match api
        .replace(&config.name_any(), &PostParams::default(), &config)
        .await
    {
        Ok(_) => {
            tracing::info!(configuration = name, "published the webhook's CA");
            Ok(())
        }
        // Another replica published first: the next round finds it done.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(anyhow::anyhow!("publishing the CA in {name}: {e}")),
    }
}
