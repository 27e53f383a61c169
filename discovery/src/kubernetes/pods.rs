//! The pure half of the Kubernetes source: one Pod → one [`Member`], and the fold of watcher
//! events into a snapshot of the pods.
//!
//! A relist (`Init`, `InitApply`…, `InitDone`) is buffered and replaces the snapshot at
//! `InitDone`, so the router never sees a half-listed cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;

use super::preset::LabelRole;
use super::{AddressMode, KubernetesSettings};
use crate::topology::{Member, Role};

/// Container port names read as the pod's Postgres port, in this order (CloudNativePG and
/// Spilo call it `postgresql`, Crunchy PGO `postgres`). Pods without one use the configured port.
pub const PORT_NAMES: [&str; 2] = ["postgresql", "postgres"];

/// Start of the note of pods labelled primary while another pod is too.
pub const TWO_LABELLED_PRIMARIES_NOTE: &str = "two pods labelled primary";

/// The member a pod stands for, as its labels claim it (before the probe verifies it).
///
/// Name = pod name; address = `podIP:port` or, with [`AddressMode::Dns`],
/// `{pod}.{service}.{namespace}.svc:port`, where the port is the pod's container port named
/// in [`PORT_NAMES`] or else `settings.port`. The role comes from the preset's label. The
/// member is routable only if the pod is `Running`, `Ready`, has an address and a primary or
/// replica label; a pod with a `deletionTimestamp` is `draining` (no new sessions). `None` for
/// a pod without a name.
pub fn pod_to_member(pod: &Pod, settings: &KubernetesSettings) -> Option<Member> {
    let name = pod.metadata.name.as_deref().filter(|n| !n.is_empty())?;
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Unknown");
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let port = pod_port(pod).unwrap_or(settings.port);
    let address = match &settings.address {
        AddressMode::Ip => status
            .and_then(|s| s.pod_ip.as_deref())
            .filter(|ip| !ip.is_empty())
            .map(|ip| join_host_port(ip, port)),
        AddressMode::Dns { service } => {
            let namespace = pod
                .metadata
                .namespace
                .as_deref()
                .or(settings.namespace.as_deref())
                .unwrap_or("default");
            Some(format!("{name}.{service}.{namespace}.svc:{port}"))
        }
    };
    let label = settings.preset.role_of(pod.metadata.labels.as_ref());

    let mut member = Member::new(name, address.clone().unwrap_or_default());
    member.role = match label {
        LabelRole::Primary => Role::Primary,
        LabelRole::Replica => Role::Replica,
        LabelRole::Other(_) | LabelRole::Missing => Role::Unknown,
    };
    let mut notes = Vec::new();
    if phase != "Running" {
        notes.push(format!("pod phase is {phase}"));
    } else if !ready {
        notes.push("pod is not Ready".to_owned());
    }
    if address.is_none() {
        notes.push("pod has no IP yet".to_owned());
    }
    match &label {
        LabelRole::Primary | LabelRole::Replica => {}
        LabelRole::Other(kv) => notes.push(format!("role label {kv} is not routable")),
        LabelRole::Missing => notes.push(format!(
            "no role label ({})",
            settings.preset.label_keys().join(" or ")
        )),
    }
    member.routable = notes.is_empty();
    if pod.metadata.deletion_timestamp.is_some() {
        member.draining = true;
        notes.push("pod is terminating: draining".to_owned());
    }
    if !notes.is_empty() {
        member.note = Some(notes.join("; "));
    }
    Some(member)
}

/// The pod's Postgres container port (named in [`PORT_NAMES`]), if it declares one.
pub fn pod_port(pod: &Pod) -> Option<u16> {
    let ports: Vec<_> = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .collect();
    PORT_NAMES.iter().find_map(|wanted| {
        ports
            .iter()
            .find(|p| p.name.as_deref() == Some(wanted))
            .and_then(|p| u16::try_from(p.container_port).ok())
    })
}

/// `host:port`, bracketing IPv6 literals.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// One pod as the store keeps it: its uid (to tell a recreated pod from the old one) and member.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    uid: Option<String>,
    member: Member,
}

/// The watched pods, folded from watcher events; a relist replaces them atomically.
#[derive(Debug, Default)]
pub struct PodStore {
    pods: BTreeMap<String, Entry>,
    /// Pods of a relist in progress, installed at `InitDone`.
    relist: Option<BTreeMap<String, Entry>>,
    /// Whether a first full list has been installed.
    listed: bool,
}

impl PodStore {
    /// An empty store that has not listed yet.
    pub fn new() -> PodStore {
        PodStore::default()
    }

    /// Folds one watcher event. Returns whether the snapshot changed (only `Apply`, `Delete` and
    /// `InitDone` can change it; `Init` and `InitApply` fill the relist buffer).
    pub fn apply(&mut self, event: Event<Pod>, settings: &KubernetesSettings) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(pod) => {
                if let Some((name, entry)) = entry(&pod, settings) {
                    self.relist.get_or_insert_default().insert(name, entry);
                }
                false
            }
            Event::InitDone => {
                let next = self.relist.take().unwrap_or_default();
                let first = !self.listed;
                self.listed = true;
                let changed = next != self.pods;
                self.pods = next;
                changed || first
            }
            Event::Apply(pod) => match entry(&pod, settings) {
                Some((name, entry)) => self.pods.insert(name, entry.clone()) != Some(entry),
                None => false,
            },
            Event::Delete(pod) => {
                let Some(name) = pod.metadata.name.as_deref() else {
                    return false;
                };
                // A delete of an older incarnation must not remove the recreated pod.
                let same = self.pods.get(name).is_some_and(|e| {
                    e.uid.is_none() || pod.metadata.uid.is_none() || e.uid == pod.metadata.uid
                });
                same && self.pods.remove(name).is_some()
            }
        }
    }

    /// Whether a full list has been installed yet.
    pub fn listed(&self) -> bool {
        self.listed
    }

    /// The members as the labels claim them, with a label conflict resolved closed: when more
    /// than one routable pod is labelled primary, none of them is routable.
    pub fn claimed(&self) -> BTreeMap<String, Member> {
        let mut members: BTreeMap<String, Member> = self
            .pods
            .iter()
            .map(|(name, e)| (name.clone(), e.member.clone()))
            .collect();
        let primaries = self.conflicting_primaries();
        if !primaries.is_empty() {
            let note = format!(
                "{TWO_LABELLED_PRIMARIES_NOTE} ({}): no primary until resolved",
                primaries.join(", ")
            );
            for name in &primaries {
                if let Some(m) = members.get_mut(name) {
                    m.routable = false;
                    m.note = Some(match m.note.take() {
                        Some(n) => format!("{note}; {n}"),
                        None => note.clone(),
                    });
                }
            }
        }
        members
    }

    /// Routable pods labelled primary, when there is more than one (a label conflict).
    pub fn conflicting_primaries(&self) -> Vec<String> {
        let primaries: Vec<String> = self
            .pods
            .values()
            .filter(|e| e.member.role == Role::Primary && e.member.routable)
            .map(|e| e.member.name.clone())
            .collect();
        if primaries.len() > 1 {
            primaries
        } else {
            Vec::new()
        }
    }

    /// Name → address of every pod that has an address, for the probe.
    pub fn addresses(&self) -> BTreeMap<String, String> {
        self.pods
            .iter()
            .filter(|(_, e)| !e.member.address.is_empty())
            .map(|(name, e)| (name.clone(), e.member.address.clone()))
            .collect()
    }
}

/// The announced change for `/topology` and the drain logic: terminating pods.
pub fn pending_change(members: &BTreeMap<String, Member>) -> Option<String> {
    let terminating: Vec<String> = members
        .values()
        .filter(|m| m.draining)
        .map(|m| format!("{} ({})", m.name, m.role))
        .collect();
    (!terminating.is_empty()).then(|| format!("pods terminating: {}", terminating.join(", ")))
}

fn entry(pod: &Pod, settings: &KubernetesSettings) -> Option<(String, Entry)> {
    let member = pod_to_member(pod, settings)?;
    Some((
        member.name.clone(),
        Entry {
            uid: pod.metadata.uid.clone(),
            member,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::Preset;
    use serde_json::json;

    fn settings() -> KubernetesSettings {
        KubernetesSettings {
            namespace: Some("db".into()),
            selector: "app=pg".into(),
            port: 5432,
            preset: Preset::Patroni,
            address: AddressMode::Ip,
            kubeconfig: None,
        }
    }

    /// A pod as the API server returns it.
    fn pod(name: &str, role: Option<&str>, ip: Option<&str>, ready: bool) -> Pod {
        let mut labels = json!({"app": "pg"});
        if let Some(r) = role {
            labels["role"] = json!(r);
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "db", "uid": format!("uid-{name}"),
                          "resourceVersion": "1", "labels": labels},
            "spec": {"containers": [{"name": "postgres"}]},
            "status": {
                "phase": "Running",
                "podIP": ip,
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
            }
        }))
        .unwrap()
    }

    fn with(mut p: Pod, f: impl FnOnce(&mut serde_json::Value)) -> Pod {
        let mut v = serde_json::to_value(&p).unwrap();
        f(&mut v);
        p = serde_json::from_value(v).unwrap();
        p
    }

    #[test]
    fn a_ready_labelled_pod_is_a_routable_member_at_its_ip() {
        let m = pod_to_member(
            &pod("pg-0", Some("master"), Some("10.0.0.5"), true),
            &settings(),
        )
        .unwrap();
        assert_eq!(m.name, "pg-0");
        assert_eq!(m.address, "10.0.0.5:5432");
        assert_eq!(m.role, Role::Primary);
        assert!(m.routable && !m.draining);
        assert_eq!(m.note, None);
        let m = pod_to_member(
            &pod("pg-1", Some("replica"), Some("fd00::7"), true),
            &settings(),
        )
        .unwrap();
        assert_eq!(
            (m.role, m.address.as_str()),
            (Role::Replica, "[fd00::7]:5432")
        );
    }

    #[test]
    fn unready_unlabelled_unscheduled_and_terminating_pods_get_no_new_sessions() {
        let s = settings();
        let cases: Vec<(Pod, bool, bool, &str)> = vec![
            (
                pod("a", Some("replica"), Some("10.0.0.1"), false),
                false,
                false,
                "not Ready",
            ),
            (
                pod("b", None, Some("10.0.0.2"), true),
                false,
                false,
                "no role label (role)",
            ),
            (
                pod("c", Some("uninitialized"), Some("10.0.0.3"), true),
                false,
                false,
                "role=uninitialized",
            ),
            (
                with(pod("d", Some("replica"), None, false), |v| {
                    v["status"]["phase"] = json!("Pending")
                }),
                false,
                false,
                "phase is Pending",
            ),
            (
                with(pod("e", Some("master"), Some("10.0.0.5"), true), |v| {
                    v["metadata"]["deletionTimestamp"] = json!("2026-11-01T00:00:00Z")
                }),
                true,
                true,
                "terminating",
            ),
        ];
        for (p, routable, draining, needle) in cases {
            let m = pod_to_member(&p, &s).unwrap();
            assert_eq!((m.routable, m.draining), (routable, draining), "{m:?}");
            let note = m.note.unwrap_or_default();
            assert!(note.contains(needle), "{note:?} lacks {needle:?}");
        }
    }

    #[test]
    fn dns_addresses_and_named_container_ports() {
        let s = KubernetesSettings {
            address: AddressMode::Dns {
                service: "pg-headless".into(),
            },
            ..settings()
        };
        let p = with(pod("pg-2", Some("replica"), None, true), |v| {
            v["spec"]["containers"] = json!([
                {"name": "sidecar", "ports": [{"name": "metrics", "containerPort": 9187}]},
                {"name": "postgres", "ports": [{"name": "postgresql", "containerPort": 6543}]}
            ])
        });
        let m = pod_to_member(&p, &s).unwrap();
        assert_eq!(m.address, "pg-2.pg-headless.db.svc:6543");
        assert!(m.routable, "{m:?}");
        assert_eq!(pod_port(&pod("x", None, None, true)), None);
    }

    #[test]
    fn a_relist_replaces_the_snapshot_only_when_done() {
        let s = settings();
        let mut store = PodStore::new();
        assert!(!store.apply(Event::Init, &s));
        assert!(!store.apply(
            Event::InitApply(pod("pg-0", Some("master"), Some("10.0.0.1"), true)),
            &s
        ));
        assert!(store.claimed().is_empty(), "nothing before InitDone");
        assert!(store.apply(Event::InitDone, &s));
        assert!(store.listed());
        assert_eq!(store.claimed().len(), 1);

        assert!(store.apply(
            Event::Apply(pod("pg-1", Some("replica"), Some("10.0.0.2"), true)),
            &s
        ));
        assert!(!store.apply(
            Event::Apply(pod("pg-1", Some("replica"), Some("10.0.0.2"), true)),
            &s
        ));
        // Relist without pg-0: it disappears at InitDone, pg-1 stays untouched meanwhile.
        store.apply(Event::Init, &s);
        store.apply(
            Event::InitApply(pod("pg-1", Some("master"), Some("10.0.0.2"), true)),
            &s,
        );
        assert_eq!(store.claimed().len(), 2);
        assert_eq!(store.claimed()["pg-1"].role, Role::Replica);
        assert!(store.apply(Event::InitDone, &s));
        let members = store.claimed();
        assert_eq!(members.keys().collect::<Vec<_>>(), vec!["pg-1"]);
        assert_eq!(members["pg-1"].role, Role::Primary);
    }

    #[test]
    fn a_recreated_pod_keeps_its_name_and_survives_the_old_pods_delete() {
        let s = settings();
        let mut store = PodStore::new();
        let old = pod("pg-1", Some("replica"), Some("10.0.0.2"), true);
        store.apply(Event::Apply(old.clone()), &s);
        let new = with(pod("pg-1", Some("replica"), Some("10.0.0.9"), true), |v| {
            v["metadata"]["uid"] = json!("uid-new")
        });
        assert!(store.apply(Event::Apply(new), &s));
        assert!(!store.apply(Event::Delete(old), &s), "stale delete ignored");
        assert_eq!(store.claimed()["pg-1"].address, "10.0.0.9:5432");
        assert_eq!(store.addresses()["pg-1"], "10.0.0.9:5432");
    }

    #[test]
    fn two_pods_labelled_primary_leave_no_routable_primary() {
        let s = settings();
        let mut store = PodStore::new();
        store.apply(
            Event::Apply(pod("pg-0", Some("master"), Some("10.0.0.1"), true)),
            &s,
        );
        store.apply(
            Event::Apply(pod("pg-1", Some("primary"), Some("10.0.0.2"), true)),
            &s,
        );
        store.apply(
            Event::Apply(pod("pg-2", Some("replica"), Some("10.0.0.3"), true)),
            &s,
        );
        let members = store.claimed();
        assert!(!members["pg-0"].routable && !members["pg-1"].routable);
        assert!(
            members["pg-0"]
                .note
                .as_deref()
                .unwrap()
                .starts_with("two pods labelled primary (pg-0, pg-1)")
        );
        assert!(members["pg-2"].routable);
        let mut t = crate::Topology::default();
        t.replace_members(members);
        assert!(t.primary().is_none());
    }

    #[test]
    fn terminating_pods_are_announced_as_a_pending_change() {
        let s = settings();
        let mut store = PodStore::new();
        store.apply(
            Event::Apply(pod("pg-0", Some("master"), Some("10.0.0.1"), true)),
            &s,
        );
        assert_eq!(pending_change(&store.claimed()), None);
        store.apply(
            Event::Apply(with(
                pod("pg-0", Some("master"), Some("10.0.0.1"), true),
                |v| v["metadata"]["deletionTimestamp"] = json!("2026-11-01T00:00:00Z"),
            )),
            &s,
        );
        assert_eq!(
            pending_change(&store.claimed()).as_deref(),
            Some("pods terminating: pg-0 (primary)")
        );
    }
}
