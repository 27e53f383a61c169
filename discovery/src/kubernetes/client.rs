//! The API client: in-cluster config, a kubeconfig (`KUBECONFIG` or an explicit path), and a
//! tap that tells the source when a watch request succeeded.
//!
//! kube-runtime's watcher re-establishes a dropped watch silently (no event until a pod
//! changes), so without the tap a source that saw errors during an API outage could not tell
//! that the API is back on a quiet cluster. The tap notices every successful watch response.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::Notify;

/// The Kubernetes API cannot be used: no client could be built, or a request failed.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// The kubeconfig file given explicitly could not be read, or its current context not used.
    #[error("kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What kube found wrong with it.
        source: kube::config::KubeconfigError,
    },
    /// Neither the in-cluster service account nor a kubeconfig (`KUBECONFIG`, `~/.kube/config`)
    /// gave a configuration.
    #[error("no Kubernetes configuration (in-cluster or kubeconfig): {0}")]
    NoConfiguration(#[source] kube::config::InferConfigError),
    /// A configuration was found but no client could be built from it (TLS, proxy settings, …).
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// Listing the pods failed (API unreachable, RBAC, bad selector, …).
    #[error("listing pods in {namespace}: {source}")]
    ListPods {
        /// The namespace listed.
        namespace: String,
        /// The API error.
        source: kube::Error,
    },
}

/// A Kubernetes client for the source, with the watch tap when built by [`connect`].
#[derive(Clone)]
pub struct KubeClient {
    pub(crate) client: kube::Client,
    pub(crate) watch_ok: Option<Arc<Notify>>,
}

impl KubeClient {
    /// Wraps a client built elsewhere (for instance with a mock service). Without the tap the
    /// source clears an API error only at the next watch event.
    pub fn new(client: kube::Client) -> KubeClient {
        KubeClient {
            client,
            watch_ok: None,
        }
    }

    /// The underlying client.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }
}

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClient")
            .field("default_namespace", &self.client.default_namespace())
            .field("tapped", &self.watch_ok.is_some())
            .finish()
    }
}

/// Builds a client from `kubeconfig` if given, else the standard way: `KUBECONFIG` or
/// `~/.kube/config`, then the in-cluster service account.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<KubeClient, KubernetesError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig_error = |source| KubernetesError::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_error)?
        }
        None => kube::Config::infer()
            .await
            .map_err(KubernetesError::NoConfiguration)?,
    };
    let watch_ok = Arc::new(Notify::new());
    let client = ClientBuilder::try_from(config)
        .map_err(KubernetesError::Client)?
        .with_layer(&Tap(Arc::clone(&watch_ok)))
        .build();
    Ok(KubeClient {
        client,
        watch_ok: Some(watch_ok),
    })
}

/// Layer that notifies on every successful watch response.
#[derive(Clone)]
struct Tap(Arc<Notify>);

impl<S> tower::Layer<S> for Tap {
    type Service = Tapped<S>;

    fn layer(&self, inner: S) -> Tapped<S> {
        Tapped {
            inner,
            watch_ok: Arc::clone(&self.0),
        }
    }
}

#[derive(Clone)]
struct Tapped<S> {
    inner: S,
    watch_ok: Arc<Notify>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Tapped<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let watch = is_watch(req.uri());
        let response = self.inner.call(req);
        let watch_ok = Arc::clone(&self.watch_ok);
        Box::pin(async move {
            let response = response.await;
            if watch && matches!(&response, Ok(r) if r.status().is_success()) {
                watch_ok.notify_one();
            }
            response
        })
    }
}

fn is_watch(uri: &http::Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_watch_requests_count() {
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        assert!(is_watch(&uri(
            "/api/v1/namespaces/db/pods?&watch=true&resourceVersion=5"
        )));
        assert!(!is_watch(&uri("/api/v1/namespaces/db/pods?&limit=500")));
        assert!(!is_watch(&uri("/api/v1/namespaces/db/pods")));
    }

    #[tokio::test]
    async fn a_missing_kubeconfig_is_a_one_line_error() {
        let e = connect(Some(Path::new("/nonexistent/kubeconfig")))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/kubeconfig"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
