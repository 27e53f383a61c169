//! A Kubernetes API server for Pods, in-process, speaking the real HTTP protocol that
//! kube-runtime's watcher uses: list with `labelSelector` (a `PodList` with
//! `metadata.resourceVersion`), and `watch=true` chunked streams of newline-delimited
//! `WatchEvent`s (ADDED/MODIFIED/DELETED/BOOKMARK/ERROR) with increasing resourceVersions.
//!
//! As the real API server does, a watch from an expired resourceVersion gets HTTP 200 and then
//! an `ERROR` event carrying a `Status` with code 410, a pod that stops matching a watch's
//! selector is sent as `DELETED` (and one that starts matching as `ADDED`), `timeoutSeconds`
//! ends a stream, `allowWatchBookmarks` adds periodic `BOOKMARK`s and `sendInitialEvents`
//! streams the current pods first, ended by a bookmark annotated `k8s.io/initial-events-end`.
//!
//! Tests drive it with [`KubeApi::apply`], [`KubeApi::delete`], [`KubeApi::recreate`],
//! [`KubeApi::drop_watches`] (streams end mid-way), [`KubeApi::stop`] / [`KubeApi::start`]
//! (an outage on the same port) and [`KubeApi::expire_history`] (forces a 410 relist), and
//! point clients at it with [`KubeApi::write_kubeconfig`]. CloudNativePG `Cluster` objects
//! (get, merge-patch, `/status`) are served by [`cnpg`].

mod cnpg;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use cnpg::CnpgPatch;

/// One pod as the tests describe it; the fixture adds uid, resourceVersion and timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakePod {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `status.phase` (`Running` by default).
    pub phase: String,
    /// The `Ready` condition.
    pub ready: bool,
    /// `status.podIP`.
    pub ip: Option<String>,
    /// Container port named `postgresql`, if any.
    pub port: Option<u16>,
    /// `metadata.deletionTimestamp` set (terminating).
    pub terminating: bool,
}

impl FakePod {
    /// A Running, Ready pod at 127.0.0.1 without labels or ports.
    pub fn new(name: &str) -> FakePod {
        FakePod {
            name: name.to_owned(),
            labels: BTreeMap::new(),
            phase: "Running".to_owned(),
            ready: true,
            ip: Some("127.0.0.1".to_owned()),
            port: None,
            terminating: false,
        }
    }

    /// With one more label.
    pub fn label(mut self, key: &str, value: &str) -> FakePod {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// With a container port named `postgresql`.
    pub fn port(mut self, port: u16) -> FakePod {
        self.port = Some(port);
        self
    }

    /// With this pod IP.
    pub fn ip(mut self, ip: &str) -> FakePod {
        self.ip = Some(ip.to_owned());
        self
    }
}

/// Request counts, for tests that check what the client did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// List requests served.
    pub lists: usize,
    /// Watch requests served (including expired ones).
    pub watches: usize,
    /// Watches answered with a 410 `ERROR` event.
    pub expired: usize,
}

/// The fixture. Dropping it stops the server and removes written kubeconfig files.
pub struct KubeApi {
    shared: Arc<Shared>,
    port: u16,
    server: Mutex<Option<Server>>,
    kubeconfigs: Mutex<Vec<PathBuf>>,
}

struct Server {
    stop: CancellationToken,
    accept: JoinHandle<()>,
}

struct Shared {
    namespace: String,
    bookmark_interval: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    rv: u64,
    next_uid: u64,
    pods: BTreeMap<String, Stored>,
    /// Every change since the last compaction, oldest first.
    history: Vec<Change>,
    /// Watches from a resourceVersion below this get 410.
    compacted: u64,
    watchers: Vec<Watcher>,
    stats: Stats,
    cnpg: cnpg::Store,
}

#[derive(Clone)]
struct Stored {
    pod: FakePod,
    uid: String,
    rv: u64,
}

/// One change: the object before and after (None = absent), both rendered at `rv`.
#[derive(Clone)]
struct Change {
    rv: u64,
    before: Option<(FakePod, Value)>,
    after: Option<(FakePod, Value)>,
}

struct Watcher {
    selector: Selector,
    events: mpsc::UnboundedSender<Bytes>,
}

impl KubeApi {
    /// Starts the server on an ephemeral 127.0.0.1 port; pods live in `namespace`.
    pub async fn start(namespace: &str) -> KubeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::new(Shared {
            namespace: namespace.to_owned(),
            bookmark_interval: Duration::from_secs(1),
            state: Mutex::new(State::default()),
        });
        let api = KubeApi {
            shared,
            port,
            server: Mutex::new(None),
            kubeconfigs: Mutex::new(Vec::new()),
        };
        api.serve(listener);
        api
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Writes a kubeconfig pointing at this server (context namespace = the fixture's) into
    /// `dir`, or the system temp directory, and returns its path. Removed when the fixture drops.
    pub fn write_kubeconfig(&self, dir: Option<&Path>) -> PathBuf {
        let dir = dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let path = dir.join(format!(
            "pgsteer-kubeconfig-{}-{}.yaml",
            std::process::id(),
            self.port
        ));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fixture\n  cluster:\n    server: {}\n\
             users:\n- name: fixture\n  user: {{}}\ncontexts:\n- name: fixture\n  context:\n    \
             cluster: fixture\n    user: fixture\n    namespace: {}\ncurrent-context: fixture\n",
            self.url(),
            self.shared.namespace
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        lock(&self.kubeconfigs).push(path.clone());
        path
    }

    /// Creates the pod (ADDED) or updates it in place (MODIFIED, same uid).
    pub fn apply(&self, pod: FakePod) {
        let mut state = self.shared.lock();
        let existing = state.pods.get(&pod.name).map(|s| s.uid.clone());
        let uid = existing.unwrap_or_else(|| state.new_uid());
        state.change(&self.shared.namespace, &pod.name.clone(), Some((pod, uid)));
    }

    /// Changes a pod with `f` (MODIFIED). Panics if there is no such pod.
    pub fn update(&self, name: &str, f: impl FnOnce(&mut FakePod)) {
        let mut pod = self.pod(name).unwrap_or_else(|| panic!("no pod {name}"));
        f(&mut pod);
        self.apply(pod);
    }

    /// Removes a pod (DELETED). Does nothing if there is no such pod.
    pub fn delete(&self, name: &str) {
        let mut state = self.shared.lock();
        if state.pods.contains_key(name) {
            state.change(&self.shared.namespace, name, None);
        }
    }

    /// Deletes the pod and creates it again under the same name with a new uid, as a
    /// StatefulSet does.
    pub fn recreate(&self, pod: FakePod) {
        let mut state = self.shared.lock();
        if state.pods.contains_key(&pod.name) {
            state.change(&self.shared.namespace, &pod.name, None);
        }
        let uid = state.new_uid();
        state.change(&self.shared.namespace, &pod.name.clone(), Some((pod, uid)));
    }

    /// The pod as stored.
    pub fn pod(&self, name: &str) -> Option<FakePod> {
        self.shared.lock().pods.get(name).map(|s| s.pod.clone())
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Ends every open watch stream cleanly (clients re-watch from their last version).
    pub fn drop_watches(&self) {
        self.shared.lock().watchers.clear();
    }

    /// Forgets the history: every resourceVersion up to now expires, so a client that
    /// re-watches from one gets a 410 `ERROR` event and must relist. Open streams stay open.
    pub fn expire_history(&self) {
        let mut state = self.shared.lock();
        state.rv += 1;
        state.compacted = state.rv;
        state.history.clear();
    }

    /// Open watch streams.
    pub fn watchers(&self) -> usize {
        let mut state = self.shared.lock();
        state.watchers.retain(|w| !w.events.is_closed());
        state.watchers.len()
    }

    /// Requests served so far.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats
    }

    /// Stops the server: the listener closes and every connection is cut (an outage). Pods and
    /// history are kept.
    pub async fn stop(&self) {
        let server = lock(&self.server).take();
        if let Some(server) = server {
            server.stop.cancel();
            let _ = server.accept.await;
        }
        self.shared.lock().watchers.clear();
    }

    /// Starts the server again on the same port.
    pub async fn start_again(&self) {
        let listener = TcpListener::bind(self.addr()).await.expect("rebind");
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let stop = CancellationToken::new();
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&self.shared),
            stop.clone(),
        ));
        *lock(&self.server) = Some(Server { stop, accept });
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(server) = lock(&self.server).take() {
            server.stop.cancel();
            server.accept.abort();
        }
        for path in lock(&self.kubeconfigs).drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl State {
    fn new_uid(&mut self) -> String {
        self.next_uid += 1;
        format!("00000000-0000-4000-8000-{:012}", self.next_uid)
    }

    /// Applies one change at a new resourceVersion and sends it to the matching watchers.
    fn change(&mut self, namespace: &str, name: &str, next: Option<(FakePod, String)>) {
        self.rv += 1;
        let rv = self.rv;
        let before = self.pods.get(name).map(|s| {
            let mut v = render(namespace, &s.pod, &s.uid, rv);
            if next.is_none() {
                // The final state of a deleted object carries the deletion's version.
                v["metadata"]["resourceVersion"] = json!(rv.to_string());
            }
            (s.pod.clone(), v)
        });
        let after = next.map(|(pod, uid)| {
            let v = render(namespace, &pod, &uid, rv);
            self.pods.insert(
                name.to_owned(),
                Stored {
                    pod: pod.clone(),
                    uid,
                    rv,
                },
            );
            (pod, v)
        });
        if after.is_none() {
            self.pods.remove(name);
        }
        let change = Change { rv, before, after };
        self.watchers
            .retain(|w| match event_for(&change, &w.selector) {
                Some(line) => w.events.send(line).is_ok(),
                None => !w.events.is_closed(),
            });
        self.history.push(change);
    }
}

/// The watch event line a watcher with `selector` sees for `change`, if any.
fn event_for(change: &Change, selector: &Selector) -> Option<Bytes> {
    let was = change
        .before
        .as_ref()
        .filter(|(p, _)| selector.matches(&p.labels));
    let is = change
        .after
        .as_ref()
        .filter(|(p, _)| selector.matches(&p.labels));
    let (kind, object) = match (was, is, &change.after) {
        (_, Some((_, v)), _) if was.is_some() => ("MODIFIED", v),
        (None, Some((_, v)), _) => ("ADDED", v),
        // Stopped matching: DELETED with the new state, as the API server does.
        (Some(_), None, Some((_, v))) => ("DELETED", v),
        (Some((_, v)), None, None) => ("DELETED", v),
        _ => return None,
    };
    Some(line(&json!({"type": kind, "object": object})))
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).expect("json");
    b.push(b'\n');
    Bytes::from(b)
}

/// A Pod object as the API server returns it.
fn render(namespace: &str, pod: &FakePod, uid: &str, rv: u64) -> Value {
    let mut metadata = json!({
        "name": pod.name,
        "namespace": namespace,
        "uid": uid,
        "resourceVersion": rv.to_string(),
        "creationTimestamp": "2026-11-01T00:00:00Z",
        "labels": pod.labels,
    });
    if pod.terminating {
        metadata["deletionTimestamp"] = json!("2026-11-01T00:10:00Z");
        metadata["deletionGracePeriodSeconds"] = json!(30);
    }
    let mut container = json!({"name": "postgres", "image": "postgres:15"});
    if let Some(port) = pod.port {
        container["ports"] =
            json!([{"name": "postgresql", "containerPort": port, "protocol": "TCP"}]);
    }
    let mut status = json!({
        "phase": pod.phase,
        "conditions": [{"type": "Ready", "status": if pod.ready { "True" } else { "False" }}],
    });
    if let Some(ip) = &pod.ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [container]},
        "status": status,
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        // As Go's net/http (the real API server) does.
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = {
                let stop = stop.clone();
                service_fn(move |req| {
                    let shared = Arc::clone(&shared);
                    let stop = stop.clone();
                    async move {
                        if cnpg::serves(req.uri().path()) {
                            return Ok::<_, Infallible>(cnpg::handle(&shared, req).await);
                        }
                        Ok(handle(&shared, req, &stop))
                    }
                })
            };
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn respond(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(line(v)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn handle(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    stop: &CancellationToken,
) -> Response<Body> {
    let path = req.uri().path();
    let namespace = path
        .strip_prefix("/api/v1/namespaces/")
        .and_then(|rest| rest.strip_suffix("/pods"));
    let (Some(namespace), true) = (namespace, req.method() == Method::GET) else {
        return respond(
            StatusCode::NOT_FOUND,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    };
    let query = parse_query(req.uri().query().unwrap_or(""));
    let selector = match Selector::parse(query.get("labelSelector").map_or("", String::as_str)) {
        Ok(s) => s,
        Err(e) => return respond(StatusCode::BAD_REQUEST, &status(400, "BadRequest", &e)),
    };
    let ours = namespace == shared.namespace;
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        watch(shared, ours, selector, &query, stop)
    } else {
        list(shared, ours, &selector)
    }
}

fn list(shared: &Shared, ours: bool, selector: &Selector) -> Response<Body> {
    let mut state = shared.lock();
    state.stats.lists += 1;
    let items: Vec<Value> = state
        .pods
        .values()
        .filter(|s| ours && selector.matches(&s.pod.labels))
        .map(|s| render(&shared.namespace, &s.pod, &s.uid, s.rv))
        .collect();
    respond(
        StatusCode::OK,
        &json!({
            "apiVersion": "v1", "kind": "PodList",
            "metadata": {"resourceVersion": state.rv.to_string()},
            "items": items,
        }),
    )
}

fn bookmark(rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        &json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": metadata}}),
    )
}

fn watch(
    shared: &Arc<Shared>,
    ours: bool,
    selector: Selector,
    query: &BTreeMap<String, String>,
    stop: &CancellationToken,
) -> Response<Body> {
    let from = query
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .map(|v| v.parse::<u64>());
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let initial_events = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let mut register = true;
    {
        let mut state = shared.lock();
        state.stats.watches += 1;
        match from {
            Some(Err(_)) => {
                return respond(
                    StatusCode::BAD_REQUEST,
                    &status(400, "BadRequest", "invalid resourceVersion"),
                );
            }
            Some(Ok(rv)) if rv < state.compacted => {
                state.stats.expired += 1;
                let message = format!("too old resource version: {rv} ({})", state.compacted);
                let error =
                    line(&json!({"type": "ERROR", "object": status(410, "Expired", &message)}));
                let _ = events_tx.send(error);
                register = false;
            }
            Some(Ok(rv)) => {
                for change in state.history.iter().filter(|c| c.rv > rv) {
                    if let Some(l) = event_for(change, &selector).filter(|_| ours) {
                        let _ = events_tx.send(l);
                    }
                }
            }
            None => {
                // No version (or "0"): the current pods as ADDED, then changes.
                for s in state
                    .pods
                    .values()
                    .filter(|s| ours && selector.matches(&s.pod.labels))
                {
                    let object = render(&shared.namespace, &s.pod, &s.uid, s.rv);
                    let _ = events_tx.send(line(&json!({"type": "ADDED", "object": object})));
                }
                if initial_events {
                    let _ = events_tx.send(bookmark(state.rv, true));
                }
            }
        }
        if register && ours {
            state.watchers.push(Watcher {
                selector,
                events: events_tx,
            });
        }
    }
    let (body_tx, body_rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    tokio::spawn(pump(
        Arc::clone(shared),
        events_rx,
        body_tx,
        bookmarks,
        timeout,
        stop.clone(),
    ));
    let stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Copies one watcher's events into its response body, adds bookmarks, ends at the timeout.
async fn pump(
    shared: Arc<Shared>,
    mut events: mpsc::UnboundedReceiver<Bytes>,
    body: mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
    bookmarks: bool,
    timeout: Duration,
    stop: CancellationToken,
) {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut ticks = tokio::time::interval(shared.bookmark_interval);
    ticks.tick().await;
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            () = &mut deadline => return,
            event = events.recv() => match event {
                Some(e) => e,
                None => return,
            },
            _ = ticks.tick(), if bookmarks => bookmark(shared.lock().rv, false),
        };
        if body.send(Ok(Frame::data(next))).await.is_err() {
            return;
        }
    }
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An equality-based label selector: `k=v`, `k==v`, `k!=v`, `k` (exists), `!k` (absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl Selector {
    /// Parses a selector; set-based forms (`in`, `notin`) are rejected.
    pub fn parse(s: &str) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if term.contains('(') || term.contains(' ') {
                return Err(format!("unsupported label selector term {term:?}"));
            }
            let req = if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(k.to_owned(), v.to_owned())
            } else if let Some((k, v)) = term.split_once("==") {
                Requirement::Equals(k.to_owned(), v.to_owned())
            } else if let Some((k, v)) = term.split_once('=') {
                Requirement::Equals(k.to_owned(), v.to_owned())
            } else if let Some(k) = term.strip_prefix('!') {
                Requirement::Absent(k.to_owned())
            } else {
                Requirement::Exists(term.to_owned())
            };
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_like_the_api_server() {
        let labels: BTreeMap<String, String> = [("app", "pg"), ("role", "master")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        for (sel, want) in [
            ("", true),
            ("app=pg", true),
            ("app==pg,role=master", true),
            ("app=pg,role=replica", false),
            ("role!=replica", true),
            ("app", true),
            ("!app", false),
            ("!zone", true),
        ] {
            assert_eq!(
                Selector::parse(sel).unwrap().matches(&labels),
                want,
                "{sel}"
            );
        }
        assert!(Selector::parse("app in (pg)").is_err());
    }

    #[test]
    fn queries_are_percent_decoded() {
        let q = parse_query("&labelSelector=app%3Dpg%2Ccnpg.io%2Fcluster%3Dc&watch=true&x=%zz");
        assert_eq!(q["labelSelector"], "app=pg,cnpg.io/cluster=c");
        assert_eq!(q["watch"], "true");
        assert_eq!(q["x"], "%zz");
    }
}
