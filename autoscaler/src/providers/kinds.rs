//! A provider with instance kinds (`[[provider.kinds]]`): one provider per kind, each built from
//! `[provider]` with that kind's overrides ([`ebbtide_config::Provider::for_kind`]), behind one
//! [`Provider`] that routes each launch to its kind. Ids are prefixed with the kind
//! (`large/local-3`), so the kinds' providers may number their instances alike and a
//! terminate, a readiness wait or a loss still reaches the right one.

use super::{Instance, Probe, Provider, ProviderFuture};
use std::time::Duration;

/// Between the kind and the inner provider's id.
const SEPARATOR: char = '/';

/// One provider per instance kind; see the module notes.
pub struct KindedProvider {
    kinds: Vec<(String, Box<dyn Provider>)>,
}

impl KindedProvider {
    /// A provider per kind of `cfg`, each built by [`super::build`] from the kind's own
    /// `[provider]` (which has no kinds).
    pub fn build(cfg: &ebbtide_config::Provider, probe: Probe) -> Result<KindedProvider, String> {
        let kinds = cfg
            .kinds
            .iter()
            .map(|k| {
                super::build(&cfg.for_kind(k), probe.clone())
                    .map(|p| (k.name.clone(), p))
                    .map_err(|e| format!("provider.kinds `{}`: {e}", k.name))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if kinds.is_empty() {
            return Err("provider.kinds is empty".into());
        }
        Ok(KindedProvider { kinds })
    }

    /// The provider of the kind an id names, and the id it knows.
    fn route<'a>(&self, id: &'a str) -> Option<(&dyn Provider, &'a str)> {
        let (kind, inner) = id.split_once(SEPARATOR)?;
        self.kinds
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, p)| (p.as_ref(), inner))
    }
}

fn wrap(kind: &str, i: Instance) -> Instance {
    Instance {
        id: format!("{kind}{SEPARATOR}{}", i.id),
        address: i.address,
    }
}

impl Provider for KindedProvider {
    fn kind(&self) -> &'static str {
        self.kinds[0].1.kind()
    }

    /// Without a kind: the first kind.
    fn launch(&self) -> ProviderFuture<'_, Result<Instance, String>> {
        self.launch_kind(&self.kinds[0].0)
    }

    fn launch_kind<'a>(&'a self, kind: &'a str) -> ProviderFuture<'a, Result<Instance, String>> {
        Box::pin(async move {
            let (name, p) = self
                .kinds
                .iter()
                .find(|(k, _)| k == kind)
                .ok_or_else(|| format!("no instance kind `{kind}` in provider.kinds"))?;
            let instance = p.launch().await?;
            tracing::info!(id = %instance.id, kind = %name, "launched a backend of this kind");
            Ok(wrap(name, instance))
        })
    }

    fn wait_ready<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let (p, id) = self
                .route(&instance.id)
                .ok_or_else(|| format!("{} is of no configured kind", instance.id))?;
            let inner = Instance {
                id: id.to_string(),
                address: instance.address.clone(),
            };
            p.wait_ready(&inner).await
        })
    }

    fn terminate<'a>(&'a self, id: &'a str) -> ProviderFuture<'a, Result<(), String>> {
        Box::pin(async move {
            match self.route(id) {
                Some((p, inner)) => p.terminate(inner).await,
                None => Err(format!("{id} is of no configured kind")),
            }
        })
    }

    fn list(&self) -> Vec<Instance> {
        self.kinds
            .iter()
            .flat_map(|(k, p)| p.list().into_iter().map(move |i| wrap(k, i)))
            .collect()
    }

    fn lost(&self) -> Vec<(String, String)> {
        self.kinds
            .iter()
            .flat_map(|(k, p)| {
                p.lost()
                    .into_iter()
                    .map(move |(id, why)| (format!("{k}{SEPARATOR}{id}"), why))
            })
            .collect()
    }

    fn wake_on_lost(&self, wake: std::sync::Arc<tokio::sync::Notify>) {
        for (_, p) in &self.kinds {
            p.wake_on_lost(wake.clone());
        }
    }

    fn shutdown(&self) -> ProviderFuture<'_, ()> {
        Box::pin(async move {
            for (_, p) in &self.kinds {
                p.shutdown().await;
            }
        })
    }

    fn boot_times(&self) -> Vec<Duration> {
        self.kinds
            .iter()
            .flat_map(|(_, p)| p.boot_times())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn probe() -> Probe {
        Arc::new(|_| Box::pin(async { true }))
    }

    /// Two kinds of the command provider whose launch scripts print the kind they were given
    /// (`{kind}` in `launch`): each launch reaches its kind's script, ids carry the kind, and a
    /// terminate reaches the right kind's provider.
    #[tokio::test]
    async fn launches_reach_their_kind_and_ids_carry_it() {
        let text = r#"
[provider]
kind = "command"
launch = ["sh", "-c", "echo '{\"id\": \"{kind}-1\", \"address\": \"127.0.0.1:9\"}'"]
terminate = ["true"]
[autoscaler]
[[provider.kinds]]
name = "large"
workers = 8
cost_per_hour = 0.24
[[provider.kinds]]
name = "small"
workers = 2
cost_per_hour = 0.1
"#;
        let cfg = ebbtide_config::Config::from_toml(text, "k.toml").unwrap();
        let p = super::super::build(cfg.provider.as_ref().unwrap(), probe()).unwrap();
        let large = p.launch_kind("large").await.unwrap();
        assert_eq!(large.id, "large/large-1");
        let small = p.launch_kind("small").await.unwrap();
        assert_eq!(small.id, "small/small-1");
        assert!(p
            .launch_kind("medium")
            .await
            .unwrap_err()
            .contains("medium"));
        let mut ids: Vec<String> = p.list().into_iter().map(|i| i.id).collect();
        ids.sort();
        assert_eq!(ids, vec!["large/large-1", "small/small-1"]);
        p.wait_ready(&small).await.unwrap();
        p.terminate(&large.id).await.unwrap();
        assert_eq!(p.list(), vec![small.clone()]);
        assert!(p.terminate("nokind").await.is_err());
        p.shutdown().await;
    }
}
