//! Token validators: who a workload is, proven by a token. Kubernetes TokenReview (feature
//! `kubernetes`, in `token::kubernetes`) inside a cluster; a static token file outside one.

use std::{collections::HashMap, fmt, future::Future, path::Path, pin::Pin, sync::RwLock};

use crate::name::{IdentityDomain, IdentityName, NameError, check_label};

#[cfg(feature = "kubernetes")]
pub mod kubernetes;

/// The Kubernetes audience that Weft's projected service-account tokens carry.
pub const AUDIENCE: &str = "identity.weft.dev";

/// A service account, the identity a token proves.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccount {
    pub fn new(namespace: &str, name: &str) -> Result<Self, NameError> {
        check_label("namespace", namespace)?;
        check_label("service account", name)?;
        Ok(Self { namespace: namespace.to_owned(), name: name.to_owned() })
    }

    /// Parses a Kubernetes username, `system:serviceaccount:NS:SA`.
    pub fn from_username(username: &str) -> Result<Self, TokenError> {
        let mut parts = username.split(':');
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("system"), Some("serviceaccount"), Some(ns), Some(sa), None) => Self::new(ns, sa)
                .map_err(|e| {
                    TokenError::Invalid(format!("token user {username:?} is not usable: {e}"))
                }),
            _ => Err(TokenError::Invalid(format!(
                "token belongs to {username:?}, not to a service account \
                 (system:serviceaccount:<namespace>:<name>)"
            ))),
        }
    }
}

impl fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a token proved nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is not valid: unknown, expired, for another audience, malformed.
    #[error("{0}")]
    Invalid(String),
    /// The token could not be checked now (the API server did not answer); retry later.
    #[error("token could not be checked: {0}")]
    Unavailable(String),
}

pub type ValidateFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ServiceAccount, TokenError>> + Send + 'a>>;

/// Turns a token into the service account it proves.
pub trait TokenValidator: Send + Sync + 'static {
    fn validate<'a>(&'a self, token: &'a [u8]) -> ValidateFuture<'a>;
}

/// Tokens from a file: a YAML (or JSON) map of token → `namespace/serviceaccount` or a full
/// identity name. For use outside Kubernetes (VMs, the demo, tests). Re-loadable.
#[derive(Debug)]
pub struct StaticTokens {
    tokens: RwLock<HashMap<String, ServiceAccount>>,
}

/// A static token file that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum StaticTokensError {
    #[error("static token file {path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl StaticTokens {
    pub fn load(path: &Path, domain: &IdentityDomain) -> Result<Self, StaticTokensError> {
        let text = std::fs::read(path).map_err(|e| StaticTokensError::Invalid {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&path.display().to_string(), &text, domain)
    }

    pub fn parse(
        what: &str,
        text: &[u8],
        domain: &IdentityDomain,
    ) -> Result<Self, StaticTokensError> {
        Ok(Self { tokens: RwLock::new(parse_tokens(what, text, domain)?) })
    }

    /// Replaces the tokens with the file's current contents; on error the old ones stay.
    pub fn reload(
        &self,
        what: &str,
        text: &[u8],
        domain: &IdentityDomain,
    ) -> Result<usize, StaticTokensError> {
        let tokens = parse_tokens(what, text, domain)?;
        let n = tokens.len();
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = tokens;
        Ok(n)
    }

    pub fn len(&self) -> usize {
        self.tokens.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn parse_tokens(
    what: &str,
    text: &[u8],
    domain: &IdentityDomain,
) -> Result<HashMap<String, ServiceAccount>, StaticTokensError> {
    let invalid = |reason: String| StaticTokensError::Invalid { path: what.to_owned(), reason };
    let map: HashMap<String, String> = serde_yaml_ng::from_slice(text).map_err(|e| {
        invalid(format!("expected a map of token to \"namespace/serviceaccount\": {e}"))
    })?;
    let mut tokens = HashMap::with_capacity(map.len());
    for (token, who) in map {
        let token = token.trim().to_owned();
        if token.is_empty() {
            return Err(invalid("an empty token would let anyone in".into()));
        }
        let sa = match who.split_once('/') {
            Some((ns, sa)) => ServiceAccount::new(ns, sa),
            None => domain.parse(&who).map(|id: IdentityName| ServiceAccount {
                namespace: id.namespace().to_owned(),
                name: id.service_account().to_owned(),
            }),
        }
        .map_err(|e| invalid(format!("entry {who:?}: {e}")))?;
        // Tokens are compared trimmed: two entries equal once trimmed would leave it to the
        // map's order which account the token proves.
        // The token itself stays out of the message: it is a secret.
        if tokens.insert(token, sa).is_some() {
            return Err(invalid(format!(
                "entry {who:?}: its token is listed twice (tokens are compared without \
                 surrounding spaces)"
            )));
        }
    }
    Ok(tokens)
}

impl TokenValidator for StaticTokens {
    fn validate<'a>(&'a self, token: &'a [u8]) -> ValidateFuture<'a> {
        let found = std::str::from_utf8(token).ok().and_then(|t| {
            self.tokens.read().unwrap_or_else(|e| e.into_inner()).get(t.trim()).cloned()
        });
        Box::pin(async move {
            found.ok_or_else(|| {
                TokenError::Invalid("the token is not in the static token file".into())
            })
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn domain() -> IdentityDomain {
        IdentityDomain::new("weft", "cluster.local").unwrap()
    }

    #[tokio::test]
    async fn static_tokens_yaml_and_json() {
        let yaml = b"t1: prod/web\n\"t2\": web.prod.serviceaccount.identity.weft.cluster.local\n";
        let st = StaticTokens::parse("f", yaml, &domain()).unwrap();
        assert_eq!(st.len(), 2);
        let web = ServiceAccount::new("prod", "web").unwrap();
        assert_eq!(st.validate(b"t1").await.unwrap(), web);
        assert_eq!(st.validate(b"t2\n").await.unwrap(), web);
        assert!(matches!(st.validate(b"t3").await, Err(TokenError::Invalid(_))));
        assert!(matches!(st.validate(&[0xff, 0xfe]).await, Err(TokenError::Invalid(_))));
        let json = br#"{"abc": "default/default"}"#;
        let st = StaticTokens::parse("f", json, &domain()).unwrap();
        assert_eq!(
            st.validate(b"abc").await.unwrap(),
            ServiceAccount::new("default", "default").unwrap()
        );
    }

    #[test]
    fn static_tokens_refuse_bad_entries() {
        for bad in [
            &b"t1: prod\n"[..],
            b"t1: Prod/web\n",
            b"t1: prod/web/x\n",
            b"t1: web.prod.serviceaccount.identity.other.cluster.local\n",
            b"\"\": prod/web\n",
            b"- a\n- b\n",
            b"t1: [x]\n",
        ] {
            assert!(
                StaticTokens::parse("f", bad, &domain()).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[tokio::test]
    async fn reload_keeps_old_tokens_on_error() {
        let st = StaticTokens::parse("f", b"t1: prod/web\n", &domain()).unwrap();
        assert!(st.reload("f", b"t1: x", &domain()).is_err());
        assert!(st.validate(b"t1").await.is_ok());
        st.reload("f", b"t2: prod/db\n", &domain()).unwrap();
        assert!(st.validate(b"t1").await.is_err());
        assert!(st.validate(b"t2").await.is_ok());
    }

    /// `"a"` and `" a"` are one token once trimmed: which account it proved depended on
    /// the map's iteration order. Found by review; the `static_tokens` fuzz target checks
    /// that every token proves the account of its entry.
    #[test]
    fn a_token_listed_twice_is_refused() {
        let text = b"\"a\": prod/x\n\" a\": prod/y\n";
        let e = StaticTokens::parse("f", text, &domain()).unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
    }

    #[test]
    fn usernames() {
        assert_eq!(
            ServiceAccount::from_username("system:serviceaccount:prod:web").unwrap(),
            ServiceAccount::new("prod", "web").unwrap()
        );
        for bad in [
            "system:serviceaccount:prod",
            "system:serviceaccount:prod:web:x",
            "system:node:prod:web",
            "admin",
            "system:serviceaccount:Prod:web",
            "system:serviceaccount::web",
        ] {
            assert!(ServiceAccount::from_username(bad).is_err(), "{bad}");
        }
    }
}
