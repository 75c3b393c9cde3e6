//! The injector's configuration: cluster-wide defaults that config annotations override,
//! and the names of the control plane that every injected proxy is pointed at.

use crate::{quantity::Quantity, values};

/// The proxy's fixed ports (DESIGN.md, "The proxy").
pub const INBOUND_PORT: u16 = 4143;
pub const OUTBOUND_PORT: u16 = 4140;
pub const ADMIN_PORT: u16 = 4191;
/// Reserved for the proxy's control port; `weft-proxy init` never redirects it.
pub const CONTROL_PORT: u16 = 4190;
pub const IDENTITY_PORT: u16 = 8080;
pub const DESTINATION_PORT: u16 = 8086;
/// The service accounts (in the control-plane namespace) whose identities proxies expect
/// the control plane to present (`WEFT_PROXY_*_SVC_NAME`). `weft identity` names its own
/// certificate after the account `identity` (`weft_identity::IdentityDomain::
/// identity_service_name`); the destination service gets the identity of the account it
/// runs as, which the Helm chart names `weft-destination`.
pub const IDENTITY_SERVICE_ACCOUNT: &str = "identity";
pub const DESTINATION_SERVICE_ACCOUNT: &str = "weft-destination";

/// The default proxy image repository; the tag is the injector's own version.
pub const DEFAULT_IMAGE_REPO: &str = "ghcr.io/weft-mesh/weft-proxy";
/// The networks the proxies' `cluster-*` inbound policies trust as the cluster's: Linkerd's
/// default `clusterNetworks` (the private and carrier-grade NAT ranges) and IPv6 ULAs.
pub const DEFAULT_CLUSTER_NETWORKS: &str =
    "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8";

#[derive(Debug, Clone, PartialEq)]
pub struct InjectorConfig {
    /// Proxy image (and init image: the same binary), tag included.
    pub proxy_image: String,
    pub image_pull_policy: String,
    pub control_plane_namespace: String,
    pub trust_domain: String,
    pub cluster_domain: String,
    pub proxy_uid: i64,
    pub proxy_log_level: String,
    /// `plain` or `json`.
    pub proxy_log_format: String,
    pub opaque_ports: String,
    pub skip_inbound_ports: String,
    pub skip_outbound_ports: String,
    pub skip_subnets: String,
    pub native_sidecar: bool,
    pub shutdown_grace_period: String,
    pub default_inbound_policy: String,
    /// CIDRs (comma-separated) of the cluster's pods and nodes: the sources that the
    /// `cluster-*` inbound policies let in. Cluster-wide, as in Linkerd: no annotation.
    pub cluster_networks: String,
    pub proxy_cpu_request: Option<String>,
    pub proxy_cpu_limit: Option<String>,
    pub proxy_memory_request: Option<String>,
    pub proxy_memory_limit: Option<String>,
    /// `auto`, `nft` or `legacy` (`weft-proxy init --iptables-mode`).
    pub iptables_mode: String,
    /// Whether `weft-proxy init` also programs ip6tables.
    pub ipv6: bool,
    /// The trust anchors (PEM) proxies verify the control plane with. `Some`: written into
    /// each pod's `weft.dev/identity-trust-anchors` annotation and projected into the proxy's
    /// trust-roots file by the downward API, so the pod needs nothing in its own namespace
    /// (a ConfigMap volume can only name a ConfigMap of the pod's namespace). `None`: the pod
    /// mounts the `weft-identity-trust-roots` ConfigMap of its namespace, which someone must
    /// have put there.
    pub trust_anchors_pem: Option<String>,
}

impl Default for InjectorConfig {
    fn default() -> Self {
        InjectorConfig {
            proxy_image: format!("{DEFAULT_IMAGE_REPO}:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: "IfNotPresent".into(),
            control_plane_namespace: "weft".into(),
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            proxy_uid: 2102,
            proxy_log_level: "warn,weft_proxy=info".into(),
            proxy_log_format: "plain".into(),
            // Linkerd's defaults: server-speaks-first and non-HTTP protocols.
            opaque_ports: "25,587,3306,4444,5432,6379,9300,11211".into(),
            skip_inbound_ports: String::new(),
            skip_outbound_ports: String::new(),
            skip_subnets: String::new(),
            native_sidecar: true,
            shutdown_grace_period: "30s".into(),
            default_inbound_policy: "all-unauthenticated".into(),
            cluster_networks: DEFAULT_CLUSTER_NETWORKS.into(),
            proxy_cpu_request: None,
            proxy_cpu_limit: None,
            proxy_memory_request: None,
            proxy_memory_limit: None,
            iptables_mode: "auto".into(),
            ipv6: true,
            trust_anchors_pem: None,
        }
    }
}

impl InjectorConfig {
    /// Checks every value as the annotations are checked; returns one message per bad value.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        let mut check = |name: &str, r: Result<(), String>| {
            if let Err(e) = r {
                errors.push(format!("{name}: {e}"));
            }
        };
        check("proxy image", values::image(&self.proxy_image).map(drop));
        check(
            "image pull policy",
            match self.image_pull_policy.as_str() {
                "Always" | "IfNotPresent" | "Never" => Ok(()),
                p => Err(format!("{p:?} is not Always, IfNotPresent or Never")),
            },
        );
        for (name, v) in [
            ("control-plane namespace", &self.control_plane_namespace),
            ("trust domain", &self.trust_domain),
            ("cluster domain", &self.cluster_domain),
        ] {
            check(name, dns_name(v));
        }
        check("proxy uid", values::uid(&self.proxy_uid.to_string()).map(drop));
        check("proxy log level", values::log_level(&self.proxy_log_level).map(drop));
        check(
            "proxy log format",
            match self.proxy_log_format.as_str() {
                "plain" | "json" => Ok(()),
                f => Err(format!("{f:?} is neither plain nor json")),
            },
        );
        check("opaque ports", values::ports(&self.opaque_ports).map(drop));
        check("skip inbound ports", values::ports(&self.skip_inbound_ports).map(drop));
        check("skip outbound ports", values::ports(&self.skip_outbound_ports).map(drop));
        check("skip subnets", values::subnets(&self.skip_subnets).map(drop));
        check("shutdown grace period", values::duration_ms(&self.shutdown_grace_period).map(drop));
        check(
            "default inbound policy",
            values::inbound_policy(&self.default_inbound_policy).map(drop),
        );
        for (name, v) in [
            ("proxy cpu request", &self.proxy_cpu_request),
            ("proxy cpu limit", &self.proxy_cpu_limit),
            ("proxy memory request", &self.proxy_memory_request),
            ("proxy memory limit", &self.proxy_memory_limit),
        ] {
            if let Some(v) = v {
                check(name, Quantity::parse(v).map(drop));
            }
        }
        // Kubernetes refuses a pod whose request is above its limit: with these defaults
        // every injected pod would be refused, whatever its annotations.
        for (what, request, limit) in [
            ("cpu", &self.proxy_cpu_request, &self.proxy_cpu_limit),
            ("memory", &self.proxy_memory_request, &self.proxy_memory_limit),
        ] {
            if let (Some(r), Some(l)) = (request, limit)
                && let (Ok(rq), Ok(lq)) = (Quantity::parse(r), Quantity::parse(l))
                && rq > lq
            {
                check(
                    &format!("proxy {what} request"),
                    Err(format!(
                        "{r:?} (--proxy-{what}-request) is above the {what} limit {l:?} (--proxy-{what}-limit): Kubernetes would refuse every injected pod"
                    )),
                );
            }
        }
        check(
            "iptables mode",
            match self.iptables_mode.as_str() {
                "auto" | "nft" | "legacy" => Ok(()),
                m => Err(format!("{m:?} is not auto, nft or legacy")),
            },
        );
        if let Some(pem) = &self.trust_anchors_pem {
            check("trust anchors", pem_certificates(pem));
        }
        match values::subnets(&self.cluster_networks) {
            // Without networks, the proxy of a pod under a `cluster-*` policy refuses to start.
            Ok(nets) if nets.is_empty() => errors.push(
                "cluster networks must not be empty: the cluster-* inbound policies let in only clients from them"
                    .to_string(),
            ),
            Ok(_) => {}
            Err(e) => errors.push(format!("cluster networks: {e}")),
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// `<svc>.<cp-ns>.svc.<cluster-domain>:<port>`: a control-plane service's address.
    pub fn service_addr(&self, service: &str, port: u16) -> String {
        format!("{service}.{}.svc.{}:{port}", self.control_plane_namespace, self.cluster_domain)
    }

    /// The identity name of a workload, as DESIGN.md ("Identity") spells it.
    pub fn identity_name(&self, service_account: &str, namespace: &str) -> String {
        format!(
            "{service_account}.{namespace}.serviceaccount.identity.{}.{}",
            self.control_plane_namespace, self.trust_domain
        )
    }
}

/// At least one PEM certificate and nothing unreadable (the proxy checks what they say).
fn pem_certificates(pem: &str) -> Result<(), String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() { Err("no PEM certificate".into()) } else { Ok(()) }
}

/// Lowercase DNS labels separated by dots.
fn dns_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok { Ok(()) } else { Err(format!("{s:?} is not a DNS name")) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_names_follow_design() {
        let c = InjectorConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            c.proxy_image,
            format!("ghcr.io/weft-mesh/weft-proxy:{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(
            c.service_addr("weft-identity", 8080),
            "weft-identity.weft.svc.cluster.local:8080"
        );
        assert_eq!(
            c.identity_name("web", "prod"),
            "web.prod.serviceaccount.identity.weft.cluster.local"
        );
    }

    #[test]
    fn bad_values_are_all_reported() {
        let c = InjectorConfig {
            proxy_uid: 0,
            opaque_ports: "x".into(),
            cluster_domain: "Cluster.Local".into(),
            proxy_memory_limit: Some("lots".into()),
            iptables_mode: "ebpf".into(),
            ..InjectorConfig::default()
        };
        let errors = c.validate().unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:#?}");
        for pem in ["", "hello", "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n"] {
            let c =
                InjectorConfig { trust_anchors_pem: Some(pem.into()), ..InjectorConfig::default() };
            let errors = c.validate().unwrap_err();
            assert!(errors[0].starts_with("trust anchors: "), "{pem:?}: {errors:?}");
        }
    }

    /// A request above its limit in the flags was only found pod by pod, blamed on a
    /// namespace annotation that did not exist: every injected pod was refused.
    #[test]
    fn a_request_above_its_limit_in_the_flags_is_refused_at_start() {
        let c = InjectorConfig {
            proxy_cpu_request: Some("2".into()),
            proxy_cpu_limit: Some("1".into()),
            proxy_memory_request: Some("1Gi".into()),
            proxy_memory_limit: Some("1024Mi".into()),
            ..InjectorConfig::default()
        };
        let errors = c.validate().unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        for part in ["proxy cpu request", "--proxy-cpu-request", "--proxy-cpu-limit", "\"2\""] {
            assert!(errors[0].contains(part), "{part}: {errors:?}");
        }
        let equal = InjectorConfig {
            proxy_cpu_request: Some("700m".into()),
            proxy_cpu_limit: Some("0.7".into()),
            ..InjectorConfig::default()
        };
        assert_eq!(equal.validate(), Ok(()));
    }

    #[test]
    fn cluster_networks_are_cidrs_and_not_empty() {
        let c = InjectorConfig::default();
        assert_eq!(c.cluster_networks, DEFAULT_CLUSTER_NETWORKS);
        let with = |nets: &str| InjectorConfig { cluster_networks: nets.into(), ..c.clone() };
        assert_eq!(with("10.0.0.0/16, fd12::/16").validate(), Ok(()));
        for bad in ["10.0.0.1/8", "10.0.0.0", "10.0.0.0/33", "cluster", "10.0.0.0/8,fd00::/129"] {
            let errors = with(bad).validate().unwrap_err();
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
            assert!(errors[0].starts_with("cluster networks: "), "{bad}: {errors:?}");
            let item = bad.rsplit(',').next().unwrap();
            assert!(errors[0].contains(item), "{bad}: the message names it: {errors:?}");
        }
        for empty in ["", " ", ",,"] {
            let errors = with(empty).validate().unwrap_err();
            assert_eq!(errors.len(), 1, "{empty:?}: {errors:?}");
            assert!(errors[0].starts_with("cluster networks must not be empty"), "{errors:?}");
        }
    }
}
