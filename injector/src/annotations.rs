//! The annotations and labels the injector reads and writes, and the resolution of
//! `config.weft.dev/*` values: the injector's defaults, overridden by the namespace's,
//! overridden by the pod's; every invalid value reported with where it came from.

use std::{collections::BTreeMap, fmt};

use crate::{config::InjectorConfig, quantity::Quantity, values};

/// `enabled` or `disabled`, on a namespace or a pod; the pod's value wins.
pub const INJECT: &str = "weft.dev/inject";
/// Written on injection: the proxy version; its presence makes injecting again a no-op.
pub const PROXY_VERSION: &str = "weft.dev/proxy-version";
/// Written on injection: what injected the proxy, and when it was asked to (`webhook`/`cli`).
pub const INJECTED_BY: &str = "weft.dev/injected-by";
/// Written on injection when the injector has the trust anchors: the PEM bundle, which the
/// downward API projects into the proxy's trust-roots file.
pub const TRUST_ANCHORS: &str = "weft.dev/identity-trust-anchors";
/// Written on injection so that `kubectl logs/exec` default to the app, not the proxy.
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
/// Label on control-plane pods: never injected (the webhook's objectSelector excludes them too).
pub const CONTROL_PLANE_COMPONENT: &str = "weft.dev/control-plane-component";
/// Label written on injected pods: the control plane they belong to (discovery selects on it).
pub const CONTROL_PLANE_NS: &str = "weft.dev/control-plane-ns";
pub const CONFIG_PREFIX: &str = "config.weft.dev/";
/// Written on every injected pod that skips inbound ports, whether the list came from the
/// pod, its namespace or the injector's default: the destination service reads it from the
/// pod (it offers no mTLS to those ports).
pub const SKIP_INBOUND_PORTS: &str = "config.weft.dev/skip-inbound-ports";

/// Container and volume names the injector adds.
pub const PROXY_CONTAINER: &str = "weft-proxy";
pub const INIT_CONTAINER: &str = "weft-proxy-init";
pub const TOKEN_VOLUME: &str = "weft-identity-token";
pub const TRUST_ROOTS_VOLUME: &str = "weft-identity-trust-roots";
pub const XTABLES_VOLUME: &str = "weft-proxy-init-xtables";

/// The `config.weft.dev/<name>` annotations of DESIGN.md ("Injector").
pub const CONFIG_KEYS: [&str; 15] = [
    "proxy-image",
    "proxy-log-level",
    "skip-inbound-ports",
    "skip-outbound-ports",
    "skip-subnets",
    "opaque-ports",
    "proxy-cpu-request",
    "proxy-cpu-limit",
    "proxy-memory-request",
    "proxy-memory-limit",
    "proxy-uid",
    "native-sidecar",
    "shutdown-grace-period",
    "default-inbound-policy",
    "access-log",
];

/// Where an annotation was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Pod,
    Namespace,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Pod => "on the pod",
            Source::Namespace => "on the namespace",
        })
    }
}

/// An annotation whose value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub value: String,
    pub source: Source,
    pub reason: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut value = self.value.clone();
        if value.len() > 64 {
            value.truncate(value.floor_char_boundary(64));
            value.push('…');
        }
        write!(f, "{}={value:?} ({}): {}", self.key, self.source, self.reason)
    }
}

/// The proxy settings of one pod, every value checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyOptions {
    pub image: String,
    pub log_level: String,
    pub skip_inbound_ports: String,
    pub skip_outbound_ports: String,
    pub skip_subnets: String,
    pub opaque_ports: String,
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
    /// The CPU limit in whole cores, rounded up, when set: the proxy sizes its runtime
    /// from it.
    pub cpu_limit_cores: Option<u64>,
    pub proxy_uid: i64,
    pub native_sidecar: bool,
    pub shutdown_grace_period: String,
    pub shutdown_grace_ms: u64,
    pub default_inbound_policy: String,
    /// `apache` or `json` when the proxy writes an HTTP access log.
    pub access_log: Option<String>,
}

/// Annotations of the pod and its namespace, looked up with the pod's winning.
pub struct Layered<'a> {
    pub pod: &'a BTreeMap<String, String>,
    pub namespace: &'a BTreeMap<String, String>,
}

impl Layered<'_> {
    pub fn get(&self, key: &str) -> Option<(&str, Source)> {
        if let Some(v) = self.pod.get(key) {
            return Some((v, Source::Pod));
        }
        self.namespace.get(key).map(|v| (v.as_str(), Source::Namespace))
    }

    /// `config.weft.dev/*` keys that Weft does not know: probably typos, worth a warning.
    pub fn unknown_config_keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (map, source) in [(self.pod, Source::Pod), (self.namespace, Source::Namespace)] {
            for key in map.keys() {
                if let Some(name) = key.strip_prefix(CONFIG_PREFIX)
                    && !CONFIG_KEYS.contains(&name)
                {
                    out.push(format!("unknown annotation {key} ({source}) is ignored"));
                }
            }
        }
        out
    }

    /// Resolves every config annotation over `config`'s defaults.
    pub fn resolve(&self, config: &InjectorConfig) -> Result<ProxyOptions, Vec<Invalid>> {
        let mut errors = Vec::new();
        let take = |name: &str| -> Option<(String, Source)> {
            let key = format!("{CONFIG_PREFIX}{name}");
            self.get(&key).map(|(v, s)| (v.to_string(), s))
        };
        // Parses the annotation `name` when set, recording an error and falling back to
        // the default so that every bad value is reported in one go.
        macro_rules! opt {
            ($name:literal, $parse:expr, $default:expr) => {{
                match take($name) {
                    None => $default,
                    Some((v, source)) => match $parse(v.as_str()) {
                        Ok(x) => x,
                        Err(reason) => {
                            errors.push(Invalid {
                                key: format!("{CONFIG_PREFIX}{}", $name),
                                value: v,
                                source,
                                reason,
                            });
                            $default
                        }
                    },
                }
            }};
        }
        let some_quantity = |v: &str| Quantity::parse(v).map(|q| Some((v.to_string(), q)));
        // The flags' values, which `InjectorConfig::validate` has checked.
        let cfg_q = |v: &Option<String>| {
            v.as_ref().map(|s| (s.clone(), Quantity::parse(s).unwrap_or_default()))
        };
        let image = opt!("proxy-image", values::image, config.proxy_image.clone());
        let log_level = opt!("proxy-log-level", values::log_level, config.proxy_log_level.clone());
        let skip_inbound_ports =
            opt!("skip-inbound-ports", values::ports, config.skip_inbound_ports.clone());
        let skip_outbound_ports =
            opt!("skip-outbound-ports", values::ports, config.skip_outbound_ports.clone());
        let skip_subnets = opt!("skip-subnets", values::subnets, config.skip_subnets.clone());
        let opaque_ports = opt!("opaque-ports", values::ports, config.opaque_ports.clone());
        let cpu_request =
            opt!("proxy-cpu-request", some_quantity, cfg_q(&config.proxy_cpu_request));
        let cpu_limit = opt!("proxy-cpu-limit", some_quantity, cfg_q(&config.proxy_cpu_limit));
        let memory_request =
            opt!("proxy-memory-request", some_quantity, cfg_q(&config.proxy_memory_request));
        let memory_limit =
            opt!("proxy-memory-limit", some_quantity, cfg_q(&config.proxy_memory_limit));
        let proxy_uid = opt!("proxy-uid", values::uid, config.proxy_uid);
        let native_sidecar = opt!("native-sidecar", values::boolean, config.native_sidecar);
        let shutdown_grace_period = opt!(
            "shutdown-grace-period",
            |v: &str| values::duration_ms(v).map(|_| v.to_string()),
            config.shutdown_grace_period.clone()
        );
        let default_inbound_policy = opt!(
            "default-inbound-policy",
            values::inbound_policy,
            config.default_inbound_policy.clone()
        );
        let access_log = opt!("access-log", |v: &str| values::access_log(v).map(Some), None);

        // Kubernetes rejects a request above its limit: say so here, next to the annotation
        // that makes it so, and where the other value comes from. Both from the injector's
        // flags cannot be: `InjectorConfig::validate` refuses them at start.
        for (what, req, lim) in
            [("cpu", &cpu_request, &cpu_limit), ("memory", &memory_request, &memory_limit)]
        {
            let (Some((r, rq)), Some((l, lq))) = (req, lim) else { continue };
            if rq <= lq {
                continue;
            }
            let req_key = format!("{CONFIG_PREFIX}proxy-{what}-request");
            let lim_key = format!("{CONFIG_PREFIX}proxy-{what}-limit");
            let origin = |key: &str, flag: &str| match self.get(key) {
                Some((_, source)) => format!("{key} {source}"),
                None => format!("the injector's --proxy-{what}-{flag}"),
            };
            match (self.get(&req_key), self.get(&lim_key)) {
                (Some((_, source)), _) => errors.push(Invalid {
                    reason: format!(
                        "the {what} request is above the {what} limit {l} ({})",
                        origin(&lim_key, "limit")
                    ),
                    key: req_key,
                    value: r.clone(),
                    source,
                }),
                (None, Some((_, source))) => errors.push(Invalid {
                    reason: format!(
                        "the {what} limit is below the {what} request {r} ({})",
                        origin(&req_key, "request")
                    ),
                    key: lim_key,
                    value: l.clone(),
                    source,
                }),
                (None, None) => {}
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let shutdown_grace_ms = values::duration_ms(&shutdown_grace_period).unwrap_or(30_000);
        Ok(ProxyOptions {
            image,
            log_level,
            skip_inbound_ports,
            skip_outbound_ports,
            skip_subnets,
            opaque_ports,
            cpu_limit_cores: cpu_limit.as_ref().map(|(_, q)| q.ceil_units()),
            cpu_request: cpu_request.map(|(s, _)| s),
            cpu_limit: cpu_limit.map(|(s, _)| s),
            memory_request: memory_request.map(|(s, _)| s),
            memory_limit: memory_limit.map(|(s, _)| s),
            proxy_uid,
            native_sidecar,
            shutdown_grace_period,
            shutdown_grace_ms,
            default_inbound_policy,
            access_log,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn pod_wins_over_namespace_over_defaults() {
        let pod = map(&[("config.weft.dev/proxy-uid", "3000")]);
        let ns = map(&[
            ("config.weft.dev/proxy-uid", "4000"),
            ("config.weft.dev/proxy-log-level", "debug"),
            ("config.weft.dev/access-log", "json"),
        ]);
        let o = Layered { pod: &pod, namespace: &ns }.resolve(&InjectorConfig::default()).unwrap();
        assert_eq!(o.access_log.as_deref(), Some("json"));
        assert_eq!(o.proxy_uid, 3000);
        assert_eq!(o.log_level, "debug");
        assert!(o.native_sidecar);
        assert_eq!(o.shutdown_grace_period, "30s");
    }

    #[test]
    fn every_invalid_value_is_reported_with_its_source() {
        let pod = map(&[
            ("config.weft.dev/proxy-uid", "0"),
            ("config.weft.dev/native-sidecar", "yes"),
            ("config.weft.dev/access-log", "xml"),
            ("config.weft.dev/proxy-cpu-request", "2"),
            ("config.weft.dev/proxy-cpu-limit", "1"),
        ]);
        let ns = map(&[("config.weft.dev/skip-subnets", "10.0.0.1/8")]);
        let errs =
            Layered { pod: &pod, namespace: &ns }.resolve(&InjectorConfig::default()).unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| (e.key.as_str(), e.source)).collect();
        assert_eq!(
            keys,
            [
                ("config.weft.dev/skip-subnets", Source::Namespace),
                ("config.weft.dev/proxy-uid", Source::Pod),
                ("config.weft.dev/native-sidecar", Source::Pod),
                ("config.weft.dev/access-log", Source::Pod),
                ("config.weft.dev/proxy-cpu-request", Source::Pod),
            ]
        );
    }

    /// The audit: compared in f64, `700m` was above `0.7` and `3e-1` above `300m` (both
    /// refused), and a memory request one byte above its limit was not (admitted, then
    /// refused by Kubernetes); `n` and `u` were refused.
    #[test]
    fn requests_and_limits_compare_exactly() {
        let resolve = |pod: &[(&str, &str)]| {
            let pod: BTreeMap<_, _> =
                pod.iter().map(|(k, v)| (format!("{CONFIG_PREFIX}{k}"), v.to_string())).collect();
            Layered { pod: &pod, namespace: &BTreeMap::new() }.resolve(&InjectorConfig::default())
        };
        for (request, limit) in
            [("700m", "0.7"), ("3e-1", "300m"), ("500u", "0.5m"), ("1000000n", "1m"), ("1", "1")]
        {
            let o = resolve(&[("proxy-cpu-request", request), ("proxy-cpu-limit", limit)])
                .unwrap_or_else(|e| panic!("{request} <= {limit}: {e:?}"));
            assert_eq!(
                (o.cpu_request.as_deref(), o.cpu_limit.as_deref()),
                (Some(request), Some(limit))
            );
        }
        let errors = resolve(&[
            ("proxy-memory-request", "9007199254740993"),
            ("proxy-memory-limit", "9007199254740992"),
        ])
        .unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "config.weft.dev/proxy-memory-request");
        assert_eq!(resolve(&[("proxy-cpu-limit", "1001m")]).unwrap().cpu_limit_cores, Some(2));
    }

    /// With the request or the limit from the injector's flags, the annotation that makes
    /// the request exceed the limit is blamed, and the flag named: it was blamed on a
    /// namespace annotation that did not exist.
    #[test]
    fn a_request_above_a_flags_limit_blames_the_annotation_and_names_the_flag() {
        let config = InjectorConfig {
            proxy_cpu_request: Some("500m".into()),
            proxy_cpu_limit: Some("1".into()),
            ..InjectorConfig::default()
        };
        let pod = map(&[("config.weft.dev/proxy-cpu-limit", "250m")]);
        let ns = map(&[]);
        let errs = Layered { pod: &pod, namespace: &ns }.resolve(&config).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(
            (errs[0].key.as_str(), errs[0].source),
            ("config.weft.dev/proxy-cpu-limit", Source::Pod)
        );
        let message = errs[0].to_string();
        assert!(
            message.contains("below the cpu request 500m (the injector's --proxy-cpu-request)"),
            "{message}"
        );

        let pod = map(&[]);
        let ns = map(&[("config.weft.dev/proxy-cpu-request", "2")]);
        let errs = Layered { pod: &pod, namespace: &ns }.resolve(&config).unwrap_err();
        assert_eq!(
            (errs[0].key.as_str(), errs[0].source),
            ("config.weft.dev/proxy-cpu-request", Source::Namespace)
        );
        let message = errs[0].to_string();
        assert!(
            message.contains("above the cpu limit 1 (the injector's --proxy-cpu-limit)"),
            "{message}"
        );

        let pod = map(&[("config.weft.dev/proxy-cpu-limit", "1")]);
        let errs = Layered { pod: &pod, namespace: &ns }.resolve(&config).unwrap_err();
        let message = errs[0].to_string();
        assert!(message.contains("(config.weft.dev/proxy-cpu-limit on the pod)"), "{message}");
    }

    #[test]
    fn unknown_keys_are_warned_about() {
        let pod = map(&[("config.weft.dev/proxy-cpu-limt", "1")]);
        let ns = BTreeMap::new();
        let w = Layered { pod: &pod, namespace: &ns }.unknown_config_keys();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("proxy-cpu-limt"));
    }
}
