//! The objects the injector adds to a pod: the `weft-proxy init` container, the proxy
//! container and their volumes, rendered from checked [`ProxyOptions`].

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::core::v1::{
        Capabilities, ConfigMapVolumeSource, Container, ContainerPort, DownwardAPIVolumeFile,
        DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
        ObjectFieldSelector, PodSpec, Probe, ProjectedVolumeSource, ResourceRequirements,
        SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
        VolumeProjection,
    },
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};

use crate::{
    annotations::{self as ann, ProxyOptions},
    config::{
        ADMIN_PORT, DESTINATION_PORT, DESTINATION_SERVICE_ACCOUNT, IDENTITY_PORT,
        IDENTITY_SERVICE_ACCOUNT, INBOUND_PORT, InjectorConfig, OUTBOUND_PORT,
    },
    probes::ProbeRoutes,
};

pub const PROXY_PORT_NAME: &str = "weft-proxy";
pub const ADMIN_PORT_NAME: &str = "weft-admin";
/// Audience of the projected token that the identity service's TokenReview checks.
pub const TOKEN_AUDIENCE: &str = "identity.weft.dev";
pub const TOKEN_EXPIRATION_SECONDS: i64 = 24 * 3600;
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
pub const TOKEN_FILE: &str = "/var/run/secrets/tokens/weft-identity-token";
pub const TRUST_ROOTS_CONFIGMAP: &str = "weft-identity-trust-roots";
pub const TRUST_ROOTS_DIR: &str = "/var/run/weft/identity/trust-roots";
pub const TRUST_ROOTS_FILE: &str = "/var/run/weft/identity/trust-roots/ca-bundle.crt";
/// The file's name in the trust-roots volume (and its key in the ConfigMap).
pub const TRUST_ROOTS_KEY: &str = "ca-bundle.crt";
/// iptables takes its lock under /run, which a read-only root filesystem would refuse.
pub const XTABLES_DIR: &str = "/run";

/// `weft-proxy init`: programs the pod's iptables, then exits. It needs root with
/// NET_ADMIN and NET_RAW: capabilities only take effect for uid 0 unless the binary carries
/// file capabilities, so everything else is locked down instead.
pub fn init_container(o: &ProxyOptions, config: &InjectorConfig) -> Container {
    let mut args = vec![
        "init".to_string(),
        "--inbound-port".into(),
        INBOUND_PORT.to_string(),
        "--outbound-port".into(),
        OUTBOUND_PORT.to_string(),
        "--proxy-uid".into(),
        o.proxy_uid.to_string(),
        "--iptables-mode".into(),
        config.iptables_mode.clone(),
        "--ipv6".into(),
        config.ipv6.to_string(),
    ];
    for (flag, value) in [
        ("--skip-inbound-ports", &o.skip_inbound_ports),
        ("--skip-outbound-ports", &o.skip_outbound_ports),
        ("--skip-subnets", &o.skip_subnets),
    ] {
        if !value.is_empty() {
            args.push(flag.to_string());
            args.push(value.clone());
        }
    }
    Container {
        name: ann::INIT_CONTAINER.to_string(),
        image: Some(o.image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        args: Some(args),
        resources: resources(o),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: ann::XTABLES_VOLUME.to_string(),
            mount_path: XTABLES_DIR.to_string(),
            ..Default::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// The proxy: a native sidecar (an init container that keeps running) unless disabled.
/// `probes` are the pod's own HTTP probes, which the proxy lets through whatever its policy.
pub fn proxy_container(
    o: &ProxyOptions,
    config: &InjectorConfig,
    probes: &ProbeRoutes,
    inbound_ports: &BTreeSet<u16>,
) -> Container {
    let probe = |path: &str, initial: i32, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(i32::from(ADMIN_PORT)),
            ..Default::default()
        }),
        initial_delay_seconds: (initial > 0).then_some(initial),
        period_seconds: Some(period),
        timeout_seconds: Some(1),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.to_string()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    Container {
        name: ann::PROXY_CONTAINER.to_string(),
        image: Some(o.image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        env: Some(env(o, config, probes, inbound_ports)),
        ports: Some(vec![port(PROXY_PORT_NAME, INBOUND_PORT), port(ADMIN_PORT_NAME, ADMIN_PORT)]),
        liveness_probe: Some(probe("/live", 10, 10, 3)),
        readiness_probe: Some(probe("/ready", 2, 10, 3)),
        // The kubelet starts the next container only once this passes: the app never runs
        // without its proxy. Two minutes covers a slow first certificate.
        startup_probe: o.native_sidecar.then(|| probe("/ready", 0, 1, 120)),
        restart_policy: o.native_sidecar.then(|| "Always".to_string()),
        resources: resources(o),
        security_context: Some(SecurityContext {
            run_as_user: Some(o.proxy_uid),
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: ann::TOKEN_VOLUME.to_string(),
                mount_path: TOKEN_DIR.to_string(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: ann::TRUST_ROOTS_VOLUME.to_string(),
                mount_path: TRUST_ROOTS_DIR.to_string(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// The proxy's environment. The identity name comes from the downward API rather than the
/// pod spec: pods made by a ReplicaSet have no name yet, and may omit serviceAccountName.
pub fn env(
    o: &ProxyOptions,
    c: &InjectorConfig,
    probes: &ProbeRoutes,
    inbound_ports: &BTreeSet<u16>,
) -> Vec<EnvVar> {
    let var = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    };
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), api_version: None }),
            ..Default::default()
        }),
    };
    let mut env = vec![
        var(
            "WEFT_PROXY_INBOUND_LISTEN_ADDR",
            format!("0.0.0.0:{INBOUND_PORT},[::]:{INBOUND_PORT}"),
        ),
        var(
            "WEFT_PROXY_OUTBOUND_LISTEN_ADDR",
            format!("127.0.0.1:{OUTBOUND_PORT},[::1]:{OUTBOUND_PORT}"),
        ),
        var("WEFT_PROXY_ADMIN_LISTEN_ADDR", format!("0.0.0.0:{ADMIN_PORT},[::]:{ADMIN_PORT}")),
        var("WEFT_PROXY_LOG", o.log_level.clone()),
        var("WEFT_PROXY_LOG_FORMAT", c.proxy_log_format.clone()),
        var("WEFT_PROXY_OPAQUE_PORTS", o.opaque_ports.clone()),
        var("WEFT_PROXY_SHUTDOWN_GRACE_PERIOD", o.shutdown_grace_period.clone()),
        var("WEFT_PROXY_INBOUND_DEFAULT_POLICY", o.default_inbound_policy.clone()),
        var("WEFT_PROXY_CLUSTER_NETWORKS", c.cluster_networks.clone()),
        // Addresses outside the cluster are not looked up (no wait, no destination load).
        var("WEFT_PROXY_DESTINATION_NETWORKS", c.cluster_networks.clone()),
    ];
    if let Some(format) = &o.access_log {
        env.push(var("WEFT_PROXY_ACCESS_LOG", format.clone()));
    }
    if let Some(ports) = probes.grpc_ports() {
        env.push(var("WEFT_PROXY_INBOUND_GRPC_PROBE_PORTS", ports));
    }
    if !probes.is_empty() {
        env.push(var("WEFT_PROXY_INBOUND_PROBE_ROUTES", probes.to_string()));
    }
    if let Some(cores) = o.cpu_limit_cores {
        // A runtime thread per whole core of the limit, at least one, at most the 1 024 the
        // proxy takes (it starts no more than the node's CPUs anyway).
        env.push(var("WEFT_PROXY_CORES", cores.clamp(1, 1024).to_string()));
    }
    // Referenced below as $(…): Kubernetes expands only variables defined before.
    env.push(field("WEFT_POD_NS", "metadata.namespace"));
    env.push(field("WEFT_POD_SA", "spec.serviceAccountName"));
    env.push(field("WEFT_POD_NAME", "metadata.name"));
    let svc_name = |sa: &str| c.identity_name(sa, &c.control_plane_namespace);
    env.extend([
        var("WEFT_PROXY_IDENTITY_ADDR", c.service_addr("weft-identity", IDENTITY_PORT)),
        var("WEFT_PROXY_IDENTITY_NAME", c.identity_name("$(WEFT_POD_SA)", "$(WEFT_POD_NS)")),
        var("WEFT_PROXY_IDENTITY_SVC_NAME", svc_name(IDENTITY_SERVICE_ACCOUNT)),
        var("WEFT_PROXY_IDENTITY_TOKEN_FILE", TOKEN_FILE.into()),
        var("WEFT_PROXY_IDENTITY_TRUST_ANCHORS_FILE", TRUST_ROOTS_FILE.into()),
        var("WEFT_PROXY_DESTINATION_ADDR", c.service_addr("weft-destination", DESTINATION_PORT)),
        var("WEFT_PROXY_DESTINATION_SVC_NAME", svc_name(DESTINATION_SERVICE_ACCOUNT)),
        // The destination service also serves the inbound policies (Servers and their
        // authorizations) of the pod's ports.
        var("WEFT_PROXY_POLICY_ADDR", c.service_addr("weft-destination", DESTINATION_PORT)),
        var("WEFT_PROXY_POLICY_SVC_NAME", svc_name(DESTINATION_SERVICE_ACCOUNT)),
        var("WEFT_PROXY_POLICY_WORKLOAD", "$(WEFT_POD_NS):$(WEFT_POD_NAME)".into()),
    ]);
    if !inbound_ports.is_empty() {
        let ports: Vec<String> = inbound_ports.iter().map(u16::to_string).collect();
        env.push(var("WEFT_PROXY_INBOUND_PORTS", ports.join(",")));
    }
    env
}

/// The proxy watches the policies of at most this many ports (its own limit).
pub const MAX_WATCHED_PORTS: usize = 256;

/// The TCP ports the pod's containers declare, the lowest `MAX_WATCHED_PORTS`: the proxy
/// watches their inbound policies (other ports keep the default policy).
pub fn inbound_ports(pod: &PodSpec) -> BTreeSet<u16> {
    let containers = pod.containers.iter().chain(pod.init_containers.iter().flatten());
    containers
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto.eq_ignore_ascii_case("TCP")))
        .filter_map(|p| u16::try_from(p.container_port).ok().filter(|p| *p != 0))
        .collect::<BTreeSet<u16>>()
        .into_iter()
        .take(MAX_WATCHED_PORTS)
        .collect()
}

/// The projected identity token, the trust anchors, and iptables' lock directory.
pub fn volumes(c: &InjectorConfig) -> [Volume; 3] {
    let trust_roots = match c.trust_anchors_pem {
        // The pod carries the anchors itself (see `InjectorConfig::trust_anchors_pem`).
        Some(_) => Volume {
            name: ann::TRUST_ROOTS_VOLUME.to_string(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: TRUST_ROOTS_KEY.into(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: format!("metadata.annotations['{}']", ann::TRUST_ANCHORS),
                        api_version: None,
                    }),
                    ..Default::default()
                }]),
                default_mode: None,
            }),
            ..Default::default()
        },
        None => Volume {
            name: ann::TRUST_ROOTS_VOLUME.to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: TRUST_ROOTS_CONFIGMAP.into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    };
    [
        Volume {
            name: ann::TOKEN_VOLUME.to_string(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                        path: "weft-identity-token".into(),
                    }),
                    ..Default::default()
                }]),
                default_mode: None,
            }),
            ..Default::default()
        },
        trust_roots,
        Volume {
            name: ann::XTABLES_VOLUME.to_string(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ]
}

fn resources(o: &ProxyOptions) -> Option<ResourceRequirements> {
    let map = |cpu: &Option<String>, mem: &Option<String>| {
        let m: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", mem)]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), Quantity(v.clone()))))
            .collect();
        (!m.is_empty()).then_some(m)
    };
    let requests = map(&o.cpu_request, &o.memory_request);
    let limits = map(&o.cpu_limit, &o.memory_limit);
    (requests.is_some() || limits.is_some()).then(|| ResourceRequirements {
        requests,
        limits,
        ..Default::default()
    })
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watched_ports_are_the_containers_tcp_ports_once_each_and_bounded() {
        let spec = serde_json::json!({
            "containers": [
                {"name": "app", "ports": [
                    {"containerPort": 8080},
                    {"containerPort": 53, "protocol": "UDP"},
                    {"containerPort": 9090, "protocol": "TCP"}
                ]},
                {"name": "other", "ports": [{"containerPort": 8080, "protocol": "TCP"}]}
            ],
            "initContainers": [{"name": "sidecar", "ports": [{"containerPort": 7000}]}]
        });
        let pod: PodSpec = serde_json::from_value(spec).expect("pod spec");
        assert_eq!(inbound_ports(&pod).into_iter().collect::<Vec<_>>(), [7000, 8080, 9090]);

        let many: Vec<_> = (1..=400).map(|p| serde_json::json!({"containerPort": p})).collect();
        let spec = serde_json::json!({"containers": [{"name": "app", "ports": many}]});
        let pod: PodSpec = serde_json::from_value(spec).expect("pod spec");
        let ports = inbound_ports(&pod);
        assert_eq!((ports.len(), ports.last().copied()), (MAX_WATCHED_PORTS, Some(256)));
    }
}
