//! CloudNativePG `Cluster` objects (`clusters.postgresql.cnpg.io/v1`) in the API fixture, as
//! far as `kubectl cnpg promote` and pgsteer's switchover use them: `GET` of the object (and of
//! its `/status`), and `PATCH` of either with a JSON merge patch (RFC 7386).
//!
//! As the real API server does for a custom resource with the status subresource: a patch of
//! `/status` changes only `status`, a patch of the object changes everything but `status` (and
//! bumps `metadata.generation` when `spec` changes); every change takes a new resourceVersion
//! from the same counter as the pods; a `metadata.resourceVersion` in the patch is an optimistic
//! lock (409 `Conflict` when stale); an unknown cluster is a 404 `NotFound`; the stored object
//! is echoed back. Every accepted patch is recorded for the tests. Any other patch type is a
//! 415: right for strategic merge patch (custom resources have none); JSON patch and
//! server-side apply, which the real server accepts, are not implemented here.

use std::collections::BTreeMap;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::{Body, KubeApi, Shared, respond, status};

const PREFIX: &str = "/apis/postgresql.cnpg.io/v1/namespaces/";

/// One accepted patch of a Cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct CnpgPatch {
    /// The Cluster's name.
    pub cluster: String,
    /// Whether it went to the `/status` subresource.
    pub status: bool,
    /// The patch as sent.
    pub body: Value,
}

/// The Clusters and the patches they received.
#[derive(Default)]
pub(super) struct Store {
    clusters: BTreeMap<String, Value>,
    patches: Vec<CnpgPatch>,
}

impl KubeApi {
    /// Creates a healthy CloudNativePG Cluster `name` of `instances` instances whose primary
    /// is `primary` (status `currentPrimary` = `targetPrimary` = `primary`). Replaces one of
    /// the same name.
    pub fn create_cnpg_cluster(&self, name: &str, instances: u32, primary: &str) {
        let namespace = self.shared.namespace.clone();
        let mut state = self.shared.lock();
        state.rv += 1;
        let uid = state.new_uid();
        let object = json!({
            "apiVersion": "postgresql.cnpg.io/v1",
            "kind": "Cluster",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": uid,
                "resourceVersion": state.rv.to_string(),
                "generation": 1,
                "creationTimestamp": "2026-11-01T00:00:00Z",
            },
            "spec": {"instances": instances, "storage": {"size": "1Gi"}},
            "status": {
                "instances": instances,
                "readyInstances": instances,
                "currentPrimary": primary,
                "targetPrimary": primary,
                "phase": "Cluster in healthy state",
                "conditions": [{
                    "type": "Ready", "status": "True", "reason": "ClusterIsReady",
                    "message": "Cluster is Ready", "lastTransitionTime": "2026-11-01T00:00:00Z",
                }],
            },
        });
        state.cnpg.clusters.insert(name.to_owned(), object);
    }

    /// Changes the Cluster with `f` at a new resourceVersion (what the operator does).
    /// Panics if there is no such cluster.
    pub fn update_cnpg_cluster(&self, name: &str, f: impl FnOnce(&mut Value)) {
        let mut state = self.shared.lock();
        state.rv += 1;
        let rv = state.rv.to_string();
        let object = state
            .cnpg
            .clusters
            .get_mut(name)
            .unwrap_or_else(|| panic!("no cluster {name}"));
        f(object);
        object["metadata"]["resourceVersion"] = json!(rv);
    }

    /// The Cluster as stored.
    pub fn cnpg_cluster(&self, name: &str) -> Option<Value> {
        self.shared.lock().cnpg.clusters.get(name).cloned()
    }

    /// The patches accepted so far, oldest first.
    pub fn cnpg_patches(&self) -> Vec<CnpgPatch> {
        self.shared.lock().cnpg.patches.clone()
    }
}

/// Whether `path` is a Cluster path this module serves.
pub(super) fn serves(path: &str) -> bool {
    path.starts_with(PREFIX)
}

fn not_found(what: &str) -> Response<Body> {
    respond(StatusCode::NOT_FOUND, &status(404, "NotFound", what))
}

/// Answers a request for a Cluster path.
pub(super) async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix(PREFIX).unwrap_or_default();
    let parts: Vec<&str> = rest.split('/').collect();
    let (namespace, name, subresource) = match parts.as_slice() {
        [ns, "clusters", name] => (*ns, *name, None),
        [ns, "clusters", name, sub] => (*ns, *name, Some(*sub)),
        _ => return not_found("the server could not find the requested resource"),
    };
    if subresource.is_some_and(|s| s != "status") {
        return not_found("the server could not find the requested resource");
    }
    let missing = format!("clusters.postgresql.cnpg.io \"{name}\" not found");
    if namespace != shared.namespace {
        return not_found(&missing);
    }
    let on_status = subresource.is_some();
    match req.method().clone() {
        Method::GET => match shared.lock().cnpg.clusters.get(name) {
            Some(object) => respond(StatusCode::OK, object),
            None => not_found(&missing),
        },
        Method::PATCH => {
            let content_type = req
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if content_type.split(';').next() != Some("application/merge-patch+json") {
                let message = format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type:?})"
                );
                return respond(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    &status(415, "UnsupportedMediaType", &message),
                );
            }
            let Ok(body) = req.into_body().collect().await else {
                return respond(
                    StatusCode::BAD_REQUEST,
                    &status(400, "BadRequest", "body not read"),
                );
            };
            match serde_json::from_slice::<Value>(&body.to_bytes()) {
                Ok(patch) if patch.is_object() => apply(shared, name, on_status, patch, &missing),
                _ => respond(
                    StatusCode::BAD_REQUEST,
                    &status(400, "BadRequest", "the patch is not a JSON object"),
                ),
            }
        }
        _ => respond(
            StatusCode::METHOD_NOT_ALLOWED,
            &status(
                405,
                "MethodNotAllowed",
                "the server does not allow this method",
            ),
        ),
    }
}

/// Applies a merge patch to the object (`on_status`: to its status only).
fn apply(
    shared: &Shared,
    name: &str,
    on_status: bool,
    patch: Value,
    missing: &str,
) -> Response<Body> {
    let mut state = shared.lock();
    let Some(current) = state.cnpg.clusters.get(name).cloned() else {
        return not_found(missing);
    };
    let current_rv = current["metadata"]["resourceVersion"].clone();
    let asked_rv = &patch["metadata"]["resourceVersion"];
    if !asked_rv.is_null() && *asked_rv != current_rv {
        let message = format!(
            "Operation cannot be fulfilled on clusters.postgresql.cnpg.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        );
        return respond(StatusCode::CONFLICT, &status(409, "Conflict", &message));
    }
    let mut patched = current.clone();
    merge(&mut patched, &patch);
    let mut next = current.clone();
    if on_status {
        next["status"] = patched["status"].take();
    } else {
        let spec_changed = patched["spec"] != current["spec"];
        next = patched;
        next["status"] = current["status"].clone();
        if spec_changed {
            let generation = current["metadata"]["generation"].as_u64().unwrap_or(0);
            next["metadata"]["generation"] = json!(generation + 1);
        }
    }
    // What the server owns stays.
    for key in ["name", "namespace", "uid", "creationTimestamp"] {
        next["metadata"][key] = current["metadata"][key].clone();
    }
    next["apiVersion"] = current["apiVersion"].clone();
    next["kind"] = current["kind"].clone();
    if next != current {
        state.rv += 1;
        next["metadata"]["resourceVersion"] = json!(state.rv.to_string());
    } else {
        next["metadata"]["resourceVersion"] = current_rv;
    }
    state.cnpg.clusters.insert(name.to_owned(), next.clone());
    state.cnpg.patches.push(CnpgPatch {
        cluster: name.to_owned(),
        status: on_status,
        body: patch,
    });
    respond(StatusCode::OK, &next)
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in fields {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The RFC's example.
        let mut doc = json!({"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"},
                             "tags": ["example", "sample"], "content": "This will be unchanged"});
        let patch = json!({"title": "Hello!", "phoneNumber": "+01-123-456-7890",
                           "author": {"familyName": null}, "tags": ["example"]});
        merge(&mut doc, &patch);
        assert_eq!(
            doc,
            json!({"title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"],
                   "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"})
        );
    }

    #[test]
    fn only_cluster_paths_are_served_here() {
        assert!(serves(
            "/apis/postgresql.cnpg.io/v1/namespaces/db/clusters/pg/status"
        ));
        assert!(!serves("/api/v1/namespaces/db/pods"));
    }
}
