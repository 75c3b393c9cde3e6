//! The names of Linkerd's default inbound policies, shared by the proxy (which enforces
//! the local default), the destination service (which answers for ports no Server
//! selects) and the injector (which checks the annotation): one list, so they cannot
//! disagree on what a name means.

use std::{fmt, str::FromStr};

/// Linkerd's default list of cluster networks, with the IPv6 unique-local range.
pub const DEFAULT_CLUSTER_NETWORKS: &str =
    "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8";

/// Who may reach a pod when nothing more specific says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DefaultPolicy {
    AllUnauthenticated,
    AllAuthenticated,
    ClusterUnauthenticated,
    ClusterAuthenticated,
    /// Allows everything, like `all-unauthenticated`, but every connection it lets in is
    /// counted under `authz_name="audit"` (and logged by the proxy): a dry run before
    /// locking down.
    Audit,
    Deny,
}

const POLICIES: [(DefaultPolicy, &str); 6] = [
    (DefaultPolicy::AllUnauthenticated, "all-unauthenticated"),
    (DefaultPolicy::AllAuthenticated, "all-authenticated"),
    (DefaultPolicy::ClusterUnauthenticated, "cluster-unauthenticated"),
    (DefaultPolicy::ClusterAuthenticated, "cluster-authenticated"),
    (DefaultPolicy::Audit, "audit"),
    (DefaultPolicy::Deny, "deny"),
];

impl DefaultPolicy {
    pub fn as_str(self) -> &'static str {
        POLICIES.iter().find(|(p, _)| *p == self).map_or("deny", |(_, s)| s)
    }

    /// Whether only mTLS clients can pass, so the proxy needs an identity to let anyone in.
    pub fn needs_identity(self) -> bool {
        matches!(self, DefaultPolicy::AllAuthenticated | DefaultPolicy::ClusterAuthenticated)
    }

    /// Every name, in Linkerd's order.
    pub fn names() -> impl Iterator<Item = &'static str> {
        POLICIES.iter().map(|(_, n)| *n)
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DefaultPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        POLICIES.iter().find(|(_, name)| *name == s.trim()).map(|(p, _)| *p).ok_or_else(|| {
            let names: Vec<&str> = DefaultPolicy::names().collect();
            format!("{s:?} is not a default inbound policy; expected one of {}", names.join(", "))
        })
    }
}
