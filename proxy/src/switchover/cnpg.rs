//! Asking CloudNativePG to switch over: the `Cluster`'s `status.targetPrimary` is set to the
//! candidate pod, which is what `kubectl cnpg promote <cluster> <pod>` does. The operator
//! then shuts the old primary down, promotes the candidate and moves the role labels; pgsteer's
//! Kubernetes source and probe see that happen.
//!
//! Like the plugin, the status is changed with a merge patch on the status subresource that
//! carries the `resourceVersion` read (an optimistic lock: a conflict is read again and
//! retried), and it also sets `phase`/`phaseReason` and the `Ready` condition as the plugin does.
//!
//! Without the `kubernetes` feature, [`promote`] answers that this build cannot ask.

#[cfg(feature = "kubernetes")]
use std::time::SystemTime;

#[cfg(feature = "kubernetes")]
use kube::Api;
#[cfg(feature = "kubernetes")]
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use pgsteer_discovery::kubernetes::KubernetesSettings;
#[cfg(feature = "kubernetes")]
use pgsteer_discovery::kubernetes::connect;
#[cfg(feature = "kubernetes")]
use serde_json::{Value, json};
#[cfg(feature = "kubernetes")]
use tracing::info;

/// `apiv1.PhaseSwitchover`.
#[cfg(feature = "kubernetes")]
pub const PHASE_SWITCHOVER: &str = "Switchover in progress";
/// The annotation listing fenced instances (a JSON array of pod names, or `["*"]`).
#[cfg(feature = "kubernetes")]
const FENCED: &str = "cnpg.io/fencedInstances";
/// Attempts when the Cluster changes between our read and our patch.
#[cfg(feature = "kubernetes")]
const CONFLICT_ATTEMPTS: usize = 5;

/// `clusters.postgresql.cnpg.io/v1`.
#[cfg(feature = "kubernetes")]
fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("postgresql.cnpg.io", "v1", "Cluster"),
        "clusters",
    )
}

/// The Cluster a CloudNativePG pod belongs to, from its name: `pg-2` → `pg`.
pub fn cluster_of(pod: &str) -> Option<&str> {
    let (cluster, n) = pod.rsplit_once('-')?;
    let numbered = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
    (numbered && !cluster.is_empty()).then_some(cluster)
}

/// Without the Kubernetes API client there is nothing to ask.
#[cfg(not(feature = "kubernetes"))]
pub async fn promote(_: &KubernetesSettings, _: &str, _: &str) -> Result<(), String> {
    Err("this pgsteer was built without the `kubernetes` feature".into())
}

/// Sets `status.targetPrimary` of Cluster `cluster` (in the namespace the Kubernetes source
/// watches) to `candidate`. Returns once the API server accepted it; the operator does the rest.
#[cfg(feature = "kubernetes")]
pub async fn promote(
    settings: &KubernetesSettings,
    cluster: &str,
    candidate: &str,
) -> Result<(), String> {
    let client = connect(settings.kubeconfig.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let client = client.client().clone();
    let namespace = settings
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let api: Api<DynamicObject> = Api::namespaced_with(client, &namespace, &resource());
    let mut last = String::new();
    for _ in 0..CONFLICT_ATTEMPTS {
        let current = api.get(cluster).await.map_err(|e| match e {
            kube::Error::Api(s) if s.is_not_found() => {
                format!("cluster {cluster} not found in namespace {namespace}")
            }
            e => format!("reading cluster {cluster} in namespace {namespace}: {e}"),
        })?;
        if current.data["status"]["targetPrimary"] == candidate {
            info!(
                cluster,
                candidate, "cloudnativepg: already the target primary"
            );
            return Ok(());
        }
        if fenced(&current, candidate) {
            return Err(format!("{candidate} is fenced and cannot be promoted"));
        }
        let patch = status_patch(&current, candidate, SystemTime::now());
        match api
            .patch_status(cluster, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(
                    cluster,
                    namespace, candidate, "cloudnativepg: target primary set"
                );
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.is_conflict() => last = s.message,
            Err(e) => return Err(format!("patching the status of cluster {cluster}: {e}")),
        }
    }
    Err(format!(
        "cluster {cluster} kept changing under the patch: {last}"
    ))
}

/// Whether the Cluster's fencing annotation names `pod` (or every instance).
#[cfg(feature = "kubernetes")]
fn fenced(cluster: &DynamicObject, pod: &str) -> bool {
    let Some(list) = cluster
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(FENCED))
    else {
        return false;
    };
    serde_json::from_str::<Vec<String>>(list)
        .is_ok_and(|names| names.iter().any(|n| n == pod || n == "*"))
}

/// The merge patch the promote plugin sends: target primary, its timestamp, the switchover
/// phase and a `Ready=False` condition, locked to the resourceVersion read.
#[cfg(feature = "kubernetes")]
fn status_patch(cluster: &DynamicObject, candidate: &str, now: SystemTime) -> Value {
    let micros = humantime::format_rfc3339_micros(now).to_string();
    let ready = json!({
        "type": "Ready",
        "status": "False",
        "reason": "ClusterIsNotReady",
        "message": "Cluster Is Not Ready",
        "lastTransitionTime": humantime::format_rfc3339_seconds(now).to_string(),
    });
    let mut conditions = cluster.data["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    match conditions.iter_mut().find(|c| c["type"] == "Ready") {
        // As meta.SetStatusCondition: the transition time changes only with the status.
        Some(c) if c["status"] == "False" => {
            c["reason"] = ready["reason"].clone();
            c["message"] = ready["message"].clone();
        }
        Some(c) => *c = ready,
        None => conditions.push(ready),
    }
    json!({
        "metadata": {"resourceVersion": cluster.metadata.resource_version},
        "status": {
            "targetPrimary": candidate,
            "targetPrimaryTimestamp": micros,
            "phase": PHASE_SWITCHOVER,
            "phaseReason": format!("Switching over to {candidate}"),
            "conditions": conditions,
        },
    })
}

#[cfg(all(test, feature = "kubernetes"))]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_is_the_pod_name_without_its_ordinal() {
        assert_eq!(cluster_of("pg-0"), Some("pg"));
        assert_eq!(cluster_of("my-db-12"), Some("my-db"));
        assert_eq!(cluster_of("pg"), None);
        assert_eq!(cluster_of("pg-a"), None);
        assert_eq!(cluster_of("-1"), None);
        assert_eq!(cluster_of("pg-"), None);
    }

    fn cluster(status: Value, annotations: Option<&str>) -> DynamicObject {
        let mut o = DynamicObject::new("pg", &resource()).data(json!({ "status": status }));
        o.metadata.resource_version = Some("42".into());
        if let Some(a) = annotations {
            o.metadata.annotations = Some([(FENCED.to_owned(), a.to_owned())].into());
        }
        o
    }

    #[test]
    fn the_patch_sets_what_the_promote_plugin_sets() {
        let c = cluster(
            json!({
                "currentPrimary": "pg-0",
                "targetPrimary": "pg-0",
                "conditions": [
                    {"type": "ContinuousArchiving", "status": "True"},
                    {"type": "Ready", "status": "True", "reason": "ClusterIsReady",
                     "lastTransitionTime": "2026-11-01T00:00:00Z"},
                ],
            }),
            None,
        );
        let at = humantime::parse_rfc3339("2026-12-07T05:30:00.123456Z").unwrap();
        let p = status_patch(&c, "pg-1", at);
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        let s = &p["status"];
        assert_eq!(s["targetPrimary"], "pg-1");
        assert_eq!(s["targetPrimaryTimestamp"], "2026-12-07T05:30:00.123456Z");
        assert_eq!(s["phase"], "Switchover in progress");
        assert_eq!(s["phaseReason"], "Switching over to pg-1");
        let conditions = s["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 2, "{conditions:?}");
        assert_eq!(conditions[0]["type"], "ContinuousArchiving");
        assert_eq!(conditions[1]["status"], "False");
        assert_eq!(conditions[1]["reason"], "ClusterIsNotReady");
        assert_eq!(conditions[1]["lastTransitionTime"], "2026-12-07T05:30:00Z");
    }

    #[test]
    fn fenced_instances_are_read_from_the_annotation() {
        assert!(!fenced(&cluster(json!({}), None), "pg-1"));
        assert!(fenced(&cluster(json!({}), Some(r#"["pg-1"]"#)), "pg-1"));
        assert!(!fenced(&cluster(json!({}), Some(r#"["pg-2"]"#)), "pg-1"));
        assert!(fenced(&cluster(json!({}), Some(r#"["*"]"#)), "pg-1"));
        assert!(!fenced(&cluster(json!({}), Some("garbage")), "pg-1"));
    }
}
