//! Running a rendered Deployment as its pod would run: the Secrets and ConfigMaps it mounts
//! published the kubelet's way, its args and env given to the real `weft` binary (listeners
//! moved to loopback), its probes, scrape port and Service used against the process; and the
//! RBAC its account is granted compared with the API requests the process made.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
    time::Duration,
};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Container, PodSpec, Secret, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use serde_json::json;

use super::{NS, Objects, WEFT, cluster::ClusterDns};
use crate::{
    kubeapi::FakeApi,
    support::{Serving, admin_request, eventually},
};

pub(super) fn pod_spec(d: &Deployment) -> &PodSpec {
    d.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("a pod spec")
}

pub(super) fn the_container(d: &Deployment) -> &Container {
    let spec = pod_spec(d);
    assert_eq!(spec.containers.len(), 1, "one container per control-plane pod");
    assert!(spec.init_containers.is_none());
    &spec.containers[0]
}

pub(super) fn container_port(c: &Container, name: &str) -> u16 {
    let p = c.ports.iter().flatten().find(|p| p.name.as_deref() == Some(name));
    let p = p.unwrap_or_else(|| panic!("container {} has no port named {name}", c.name));
    u16::try_from(p.container_port).expect("a port")
}

/// What the pod's container runs: the image's entrypoint (`weft`) with the args, and the
/// env the kubelet builds from `env` and `envFrom` ConfigMaps, and the downward API's
/// `metadata.name` (`pod`).
pub(super) fn pod_env(c: &Container, objects: &Objects, pod: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for from in c.env_from.iter().flatten() {
        let name = &from.config_map_ref.as_ref().expect("envFrom a ConfigMap").name;
        let cm: ConfigMap = objects.get("ConfigMap", name);
        env.extend(cm.data.unwrap_or_default());
    }
    for e in c.env.iter().flatten() {
        let field = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
        let value = match (&e.value, field) {
            (Some(v), None) => v.clone(),
            (None, Some(f)) if f.field_path == "metadata.name" => pod.to_owned(),
            _ => panic!("{}: plain values or the pod's name only", e.name),
        };
        env.insert(e.name.clone(), value);
    }
    env
}

/// What the test's TokenReview takes as a projected service-account token of `account`
/// (`system:serviceaccount:<ns>:<name>`) for `audience`.
pub(super) fn projected_token(account: &str, audience: &str) -> String {
    format!("projected-token/{audience}/{account}")
}

/// The API server's TokenReview, for the tokens [`projected_token`] makes: authenticated
/// when one of the audiences asked for is the token's.
pub(super) fn review_tokens(api: &FakeApi) {
    api.on_post("/apis/authentication.k8s.io/v1/tokenreviews", |review| {
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let parsed = token.strip_prefix("projected-token/").and_then(|t| t.split_once('/'));
        let asked = review["spec"]["audiences"].as_array().cloned().unwrap_or_default();
        let mut answer = review.clone();
        answer["status"] = match parsed {
            Some((audience, account)) if asked.iter().any(|a| a == audience) => json!({
                "authenticated": true, "audiences": [audience],
                "user": {"username": account, "groups": ["system:serviceaccounts"]},
            }),
            _ => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        (201, answer)
    });
}

/// Publishes each mounted Secret/ConfigMap under `root` as the kubelet does (files behind a
/// `..data` symlink) and each projected service-account token of the pod's account (as
/// [`projected_token`] writes it); returns the mount paths.
pub(super) fn materialize(root: &Path, d: &Deployment, objects: &Objects) -> Vec<String> {
    let spec = pod_spec(d);
    let c = the_container(d);
    let sa = spec.service_account_name.as_deref().expect("a service account");
    let account = format!("system:serviceaccount:{NS}:{sa}");
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        assert!(m.sub_path.is_none(), "{}: subPath mounts never see updates", m.name);
        assert_eq!(m.read_only, Some(true), "{}: mounted read-only", m.name);
        let v = spec.volumes.iter().flatten().find(|v| v.name == m.name).expect("its volume");
        let files: Vec<(String, Vec<u8>)> = if let Some(s) = &v.secret {
            let name = s.secret_name.as_deref().expect("secretName");
            let secret: Secret = objects.get("Secret", name);
            secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()
        } else if let Some(c) = &v.config_map {
            let cm: ConfigMap = objects.get("ConfigMap", &c.name);
            cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect()
        } else if let Some(p) = &v.projected {
            let sources = p.sources.iter().flatten();
            sources
                .map(|s| {
                    let t = s.service_account_token.as_ref();
                    let t = t.unwrap_or_else(|| panic!("{}: only tokens are projected", v.name));
                    let audience = t.audience.as_deref().expect("a token for an audience");
                    (t.path.clone(), projected_token(&account, audience).into_bytes())
                })
                .collect()
        } else {
            panic!("volume {}: only Secrets, ConfigMaps and tokens are expected", v.name)
        };
        let dir = root.join(m.mount_path.trim_start_matches('/'));
        let generation = dir.join("..2026_01_01_00_00_00.000000001");
        std::fs::create_dir_all(&generation).expect("mount dir");
        for (name, data) in &files {
            std::fs::write(generation.join(name), data).expect("write");
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).expect("link");
        }
        std::os::unix::fs::symlink("..2026_01_01_00_00_00.000000001", dir.join("..data"))
            .expect("..data");
        mounts.push(m.mount_path.clone());
    }
    mounts
}

/// A server started from a rendered Deployment, killed on drop.
pub(super) struct Running {
    pub(super) serving: Serving,
    deployment: Deployment,
    /// `--listen-addr`, `--admin-addr`: the ports the rendered args asked for.
    ports: BTreeMap<String, u16>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.serving.child.kill();
        let _ = self.serving.child.wait();
    }
}

impl Running {
    /// Runs the Deployment's container as the pod would, with these changes: listeners on
    /// loopback ephemeral ports instead of `0.0.0.0:<port>`, paths under a mount point moved
    /// under `root`, and Service names reached as `dns` says. The process gets only the
    /// pod's env, and a kubeconfig for `api` in place of the in-cluster service account.
    pub(super) fn start(
        name: &str,
        objects: &Objects,
        root: &Path,
        api: &FakeApi,
        dns: &ClusterDns<'_>,
    ) -> Running {
        let deployment: Deployment = objects.get("Deployment", name);
        let c = the_container(&deployment);
        assert!(c.command.is_none(), "{name}: the image's entrypoint is the weft binary");
        let mounts = materialize(root, &deployment, objects);
        let relocate = |value: &str| -> String {
            for m in &mounts {
                if let Some(pos) = value.find(&format!("{m}/"))
                    && (pos == 0 || value[..pos].ends_with('='))
                {
                    let moved = root.join(value[pos..].trim_start_matches('/'));
                    return format!("{}{}", &value[..pos], moved.display());
                }
            }
            value.to_owned()
        };
        let mut ports = BTreeMap::new();
        let args: Vec<String> = c
            .args
            .iter()
            .flatten()
            .map(|a| match a.split_once("=0.0.0.0:") {
                Some((flag, port)) => {
                    ports.insert(flag.to_owned(), port.parse().expect("a port"));
                    format!("{flag}=127.0.0.1:0")
                }
                None => dns.rewrite(&relocate(a)),
            })
            .collect();
        let mut cmd = Command::new(WEFT);
        cmd.env_clear().args(&args).env("KUBECONFIG", api.kubeconfig());
        for (k, v) in pod_env(c, objects, &format!("{name}-6b7f9d8c5-qz4tw")) {
            cmd.env(k, dns.rewrite(&relocate(&v)));
        }
        if let ClusterDns::ResolvConf(conf) = dns {
            let command = args.first().expect("a subcommand").to_uppercase();
            cmd.env(format!("WEFT_{command}_DNS_RESOLV_CONF"), conf);
        }
        let serving =
            Serving::start(cmd, &format!("{name} from the chart"), Duration::from_secs(20));
        Running { serving, deployment, ports }
    }

    pub(super) fn container(&self) -> &Container {
        the_container(&self.deployment)
    }

    /// Probes, scrape annotations and the Service, used for real against the process.
    pub(super) fn check_pod_plumbing(&self, objects: &Objects, service: &str, served_key: &str) {
        let name = self.deployment.metadata.name.clone().unwrap_or_default();
        let c = self.container();
        let admin_port = self.ports["--admin-addr"];
        let listen_port = self.ports["--listen-addr"];
        assert_eq!(container_port(c, "admin-http"), admin_port, "{name}: admin port");
        let admin = self.serving.addr("admin");
        for (what, probe) in [("liveness", &c.liveness_probe), ("readiness", &c.readiness_probe)] {
            let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("an HTTP probe");
            let port = match &get.port {
                IntOrString::String(n) => container_port(c, n),
                IntOrString::Int(p) => u16::try_from(*p).expect("port"),
            };
            assert_eq!(port, admin_port, "{name}: {what} probe on the admin port");
            let path = get.path.clone().expect("a probe path");
            let ok = eventually(Duration::from_secs(15), || {
                admin_request(admin, "GET", &path, "").0 == 200
            });
            assert!(ok, "{name}: {what} probe {path} never answered 200:\n{}", self.logs());
        }
        let annotations = self
            .deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default();
        assert_eq!(annotations["prometheus.io/scrape"], "true", "{name}");
        assert_eq!(annotations["prometheus.io/port"], admin_port.to_string(), "{name}");
        // 200 is what Prometheus needs; a server may have no sample yet.
        let (code, metrics) = admin_request(admin, "GET", &annotations["prometheus.io/path"], "");
        assert_eq!(code, 200, "{name}: scrape: {metrics}");

        let svc: Service = objects.get("Service", service);
        let spec = svc.spec.expect("spec");
        let labels = self
            .deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        for (k, v) in spec.selector.iter().flatten() {
            assert_eq!(labels.get(k), Some(v), "Service {service} selects {name}'s pods");
        }
        let selector = self.deployment.spec.as_ref().map(|s| &s.selector).expect("selector");
        for (k, v) in selector.match_labels.iter().flatten() {
            assert_eq!(labels.get(k), Some(v), "{name}'s selector matches its pods");
        }
        let ports = spec.ports.unwrap_or_default();
        assert_eq!(ports.len(), 1, "{service}: one port");
        let target = match ports[0].target_port.as_ref().expect("targetPort") {
            IntOrString::String(n) => container_port(c, n),
            IntOrString::Int(p) => u16::try_from(*p).expect("port"),
        };
        assert_eq!(target, listen_port, "Service {service} reaches {name}'s server");
        assert!(self.serving.fields[served_key].is_string(), "{}", self.serving.fields);
    }

    pub(super) fn logs(&self) -> String {
        self.serving.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// (verb, API group, resource) of each request the fake API server saw.
pub(super) fn requested(api: &FakeApi) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in api.requests() {
        let (method, target) = r.split_once(' ').expect("METHOD path");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match segs.as_slice() {
            ["api", "v1", rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => panic!("not an API path: {r}"),
        };
        let (resource, named) = match rest {
            [resource] => (resource.to_string(), false),
            ["namespaces", _] => ("namespaces".to_string(), true),
            ["namespaces", _, resource] => (resource.to_string(), false),
            [resource, _] | ["namespaces", _, resource, _] => (resource.to_string(), true),
            ["namespaces", _, resource, _, sub] => (format!("{resource}/{sub}"), true),
            _ => panic!("unexpected API path: {r}"),
        };
        let verb = match (method, named, query.split('&').any(|q| q == "watch=true")) {
            ("GET", false, true) => "watch",
            ("GET", false, false) => "list",
            ("GET", true, _) => "get",
            ("POST", false, _) => "create",
            ("PUT", true, _) => "update",
            ("PATCH", true, _) => "patch",
            _ => panic!("unexpected request: {r}"),
        };
        out.insert((verb.to_owned(), group.to_owned(), resource));
    }
    out
}

/// (verb, API group, resource) that the ClusterRoles and (release namespace) Roles bound to
/// `account` grant.
pub(super) fn granted(objects: &Objects, account: &str) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    let mut add = |rules: Vec<PolicyRule>| {
        for rule in rules {
            assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
            for g in rule.api_groups.iter().flatten() {
                for r in rule.resources.iter().flatten() {
                    for v in &rule.verbs {
                        assert_ne!(v, "*", "no wildcard verbs");
                        out.insert((v.clone(), g.clone(), r.clone()));
                    }
                }
            }
        }
    };
    for b in objects.all::<RoleBinding>("RoleBinding") {
        let bound = b.subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount" && s.name == account && s.namespace.as_deref() == Some(NS)
        });
        if bound {
            assert_eq!(b.role_ref.kind, "Role");
            let role: Role = objects.get("Role", &b.role_ref.name);
            add(role.rules.unwrap_or_default());
        }
    }
    for b in objects.all::<ClusterRoleBinding>("ClusterRoleBinding") {
        let bound = b.subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount" && s.name == account && s.namespace.as_deref() == Some(NS)
        });
        if !bound {
            continue;
        }
        assert_eq!(b.role_ref.kind, "ClusterRole");
        let role: ClusterRole = objects.get("ClusterRole", &b.role_ref.name);
        add(role.rules.unwrap_or_default());
    }
    out
}

pub(super) fn check_rbac(objects: &Objects, deployment: &str, api: &FakeApi) {
    let d: Deployment = objects.get("Deployment", deployment);
    let account = pod_spec(&d).service_account_name.clone().expect("a service account");
    let _: ServiceAccount = objects.get("ServiceAccount", &account);
    assert_eq!(
        granted(objects, &account),
        requested(api),
        "{deployment}: the RBAC rules must be exactly what it asks of the API server"
    );
}
