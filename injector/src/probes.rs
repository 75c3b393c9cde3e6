//! The pod's kubelet HTTP probes as the proxy's probe routes
//! (`WEFT_PROXY_INBOUND_PROBE_ROUTES`): requests the proxy lets in from anywhere whatever
//! its inbound policy, so that a pod locked down to meshed clients still passes its
//! probes. Linkerd's policy controller does the same with the `probe` route of each pod.

use std::{collections::BTreeSet, fmt};

use k8s_openapi::{
    api::core::v1::{Container, HTTPGetAction, PodSpec, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::annotations as ann;

/// `PORT:PATH` routes, sorted by port then path, without duplicates: the format of
/// `WEFT_PROXY_INBOUND_PROBE_ROUTES`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeRoutes {
    routes: BTreeSet<(u16, String)>,
    /// The ports of gRPC probes (`WEFT_PROXY_INBOUND_GRPC_PROBE_PORTS`): the proxy lets the
    /// kubelet's health check through on them.
    grpc: BTreeSet<u16>,
}

impl ProbeRoutes {
    /// The HTTP GET probes (liveness, readiness, startup) of the pod's app containers: its
    /// containers and its native sidecars (init containers with `restartPolicy: Always`;
    /// other init containers cannot have probes). Never the Weft proxy's own, which the
    /// kubelet sends to the admin port, past the proxy's inbound side.
    pub fn of(pod: &PodSpec) -> ProbeRoutes {
        let (mut routes, mut grpc) = (BTreeSet::new(), BTreeSet::new());
        for (c, _, probe) in probes(pod) {
            routes.extend(probe.http_get.as_ref().and_then(|get| route(c, get)));
            grpc.extend(probe.grpc.as_ref().and_then(|g| valid_port(g.port)));
        }
        ProbeRoutes { routes, grpc }
    }

    /// The gRPC probes' ports, comma-separated; `None` without any.
    pub fn grpc_ports(&self) -> Option<String> {
        let ports: Vec<String> = self.grpc.iter().map(u16::to_string).collect();
        (!ports.is_empty()).then(|| ports.join(","))
    }

    /// The probes that go through the proxy but that no probe route can carry (HTTPS probes,
    /// paths the list cannot hold), as `container kind (why)`: a policy that refuses the
    /// kubelet fails them. TCP probes pass (the proxy accepts the connection); exec probes
    /// never touch the network.
    pub fn uncovered(pod: &PodSpec) -> Vec<String> {
        let mut out = Vec::new();
        for (c, kind, probe) in probes(pod) {
            let why = match (&probe.http_get, &probe.grpc) {
                (Some(get), _) if route(c, get).is_none() => match get.scheme.as_deref() {
                    Some(s) if s.eq_ignore_ascii_case("HTTPS") => "HTTPS",
                    _ => "a path or port the probe routes cannot carry",
                },
                (None, Some(g)) if valid_port(g.port).is_none() => "a port out of range",
                _ => continue,
            };
            out.push(format!("{} {kind} ({why})", c.name));
        }
        out
    }

    /// Whether there are no `GET` routes (gRPC ports aside).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// Every probe of the pod's app containers and native sidecars (init containers with
/// `restartPolicy: Always`; other init containers cannot have probes), never the Weft
/// proxy's own, which the kubelet sends to the admin port, past the proxy's inbound side.
fn probes(pod: &PodSpec) -> impl Iterator<Item = (&Container, &'static str, &Probe)> {
    let sidecars = pod.init_containers.iter().flatten();
    let sidecars = sidecars.filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let apps = pod.containers.iter().chain(sidecars).filter(|c| c.name != ann::PROXY_CONTAINER);
    apps.flat_map(|c| {
        let kinds = [
            ("livenessProbe", &c.liveness_probe),
            ("readinessProbe", &c.readiness_probe),
            ("startupProbe", &c.startup_probe),
        ];
        kinds.into_iter().filter_map(move |(kind, p)| p.as_ref().map(|p| (c, kind, p)))
    })
}

impl fmt::Display for ProbeRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (port, path)) in self.routes.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{port}:{path}")?;
        }
        Ok(())
    }
}

/// A port number the proxy can hold (not 0, not above 65535).
fn valid_port(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// One probe's route, when the proxy can match it: `None` for what it never sees as a
/// plaintext path, and for what the route list cannot carry.
fn route(c: &Container, get: &HTTPGetAction) -> Option<(u16, String)> {
    // An HTTPS probe reaches the proxy as TLS, whose path it cannot read.
    if get.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS")) {
        return None;
    }
    let port = match &get.port {
        IntOrString::Int(n) => *n,
        // A name the container does not have fails the probe in the kubelet too.
        IntOrString::String(name) => {
            let ports = c.ports.iter().flatten();
            ports.filter(|p| p.name.as_deref() == Some(name)).map(|p| p.container_port).next()?
        }
    };
    let port = valid_port(port)?;
    // The kubelet sends no fragment, and the proxy matches the path without the query
    // (as Linkerd's probe route does). An empty path is requested as `/`.
    let path = get.path.as_deref().unwrap_or_default();
    let path = path.split(['?', '#']).next().unwrap_or_default();
    // The kubelet requests `healthz` as `/healthz` (Go's URL adds the slash after a host).
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    // The route list is comma-separated; a path the proxy would refuse must not cost the
    // pod its proxy.
    if path.contains(',') || path.contains(char::is_whitespace) {
        return None;
    }
    Some((port, path))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn routes(spec: serde_json::Value) -> String {
        ProbeRoutes::of(&serde_json::from_value(spec).unwrap()).to_string()
    }

    fn app(probe: serde_json::Value) -> serde_json::Value {
        json!({"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}],
                               "readinessProbe": probe}]})
    }

    #[test]
    fn each_probe_gives_its_port_and_path() {
        let get = |get: serde_json::Value| routes(app(json!({"httpGet": get})));
        assert_eq!(get(json!({"port": 8080, "path": "/ready"})), "8080:/ready");
        assert_eq!(get(json!({"port": "http", "path": "/ready"})), "8080:/ready");
        assert_eq!(get(json!({"port": 8080})), "8080:/", "the kubelet's default path");
        assert_eq!(get(json!({"port": 8080, "path": ""})), "8080:/");
        assert_eq!(get(json!({"port": 8080, "path": "/r?full=1#x"})), "8080:/r");
        assert_eq!(get(json!({"port": 8080, "path": "/r#x"})), "8080:/r");
        assert_eq!(get(json!({"port": 8080, "path": "/a:b/c"})), "8080:/a:b/c");
        assert_eq!(
            get(json!({"port": 8080, "path": "ready"})),
            "8080:/ready",
            "as the kubelet asks"
        );
        assert_eq!(get(json!({"port": 8080, "path": "/r", "scheme": "HTTP"})), "8080:/r");
        for skipped in [
            json!({"port": 8080, "path": "/r", "scheme": "HTTPS"}),
            json!({"port": "metrics", "path": "/r"}),
            json!({"port": "8080", "path": "/r"}),
            json!({"port": 0, "path": "/r"}),
            json!({"port": 70000, "path": "/r"}),
            json!({"port": 8080, "path": "/a,b"}),
            json!({"port": 8080, "path": "/a b"}),
            json!({"port": 8080, "path": "/a\tb"}),
        ] {
            assert_eq!(get(skipped.clone()), "", "{skipped}");
        }
        assert_eq!(routes(app(json!({"tcpSocket": {"port": 8080}}))), "");
        assert_eq!(routes(app(json!({"exec": {"command": ["true"]}}))), "");
        assert_eq!(routes(json!({"containers": [{"name": "app"}]})), "");
    }

    #[test]
    fn every_app_container_and_native_sidecar_counts_sorted_once() {
        let get = |port: u16, path: &str| json!({"httpGet": {"port": port, "path": path}});
        let spec = json!({
            "initContainers": [
                // Not a native sidecar: run to completion before the probes start.
                {"name": "setup", "readinessProbe": get(1111, "/no")},
                {"name": "sidecar", "restartPolicy": "Always", "startupProbe": get(7070, "/up")},
                // The proxy's own probes go to its admin port, not through it.
                {"name": "weft-proxy", "restartPolicy": "Always", "livenessProbe": get(4191, "/live")},
            ],
            "containers": [
                {"name": "a", "livenessProbe": get(10000, "/live"), "readinessProbe": get(8080, "/z"),
                 "startupProbe": get(8080, "/a")},
                {"name": "b", "livenessProbe": get(8080, "/z"), "readinessProbe": get(9090, "/")},
            ],
        });
        assert_eq!(routes(spec), "7070:/up,8080:/a,8080:/z,9090:/,10000:/live");
    }
}
