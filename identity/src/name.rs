//! Identity names: the DNS-like name of a workload
//! (`<sa>.<ns>.serviceaccount.identity.<control-plane-ns>.<trust-domain>`) and its SPIFFE ID
//! (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`), parsed and checked against DNS-1123.

use std::{fmt, str::FromStr, sync::Arc};

/// Most bytes of untrusted input echoed in an error, a log line or a gRPC status.
pub const MAX_ECHO_BYTES: usize = 256;

/// `value` quoted (as `{:?}` does) for an error or a log line, cut to `MAX_ECHO_BYTES`
/// (on a character boundary) with an ellipsis and its full length when longer: input from
/// the network may be as long as the largest request, and is echoed whole nowhere.
pub fn echo(value: &str) -> String {
    if value.len() <= MAX_ECHO_BYTES {
        return format!("{value:?}");
    }
    let cut = value.floor_char_boundary(MAX_ECHO_BYTES);
    format!("{:?}… ({} bytes)", &value[..cut], value.len())
}

/// `message` cut to `max` bytes (on a character boundary), with an ellipsis and its full
/// length when longer: a backstop for messages that may carry input.
pub fn truncate(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_owned();
    }
    let cut = message.floor_char_boundary(max);
    format!("{}… ({} bytes)", &message[..cut], message.len())
}

/// Why a name was refused; each says which part is wrong and what is allowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {value} is longer than {max} characters")]
    /// `value` as [`echo`] shows it (quoted, cut).
    TooLong { what: &'static str, value: String, max: usize },
    #[error(
        "{what} {value} is not a DNS-1123 label (lowercase letters, digits and '-', \
         starting and ending with a letter or digit)"
    )]
    NotALabel { what: &'static str, value: String },
    #[error(
        "{value} is not an identity name of the form \
         <serviceaccount>.<namespace>.serviceaccount.identity.<control-plane-namespace>.<trust-domain>"
    )]
    NotAnIdentity { value: String },
    #[error(
        "identity {name:?} belongs to control plane {found_ns:?} in trust domain {found_td:?}, \
         not {expected_ns:?} in {expected_td:?}"
    )]
    ForeignDomain {
        name: String,
        found_ns: String,
        found_td: String,
        expected_ns: String,
        expected_td: String,
    },
    #[error(
        "{value} is not a SPIFFE ID of the form spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>"
    )]
    NotASpiffeId { value: String },
}

/// A DNS name may be at most this long; identity names are used as TLS SNI.
pub const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Checks a DNS-1123 label: 1–63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn check_label(what: &'static str, value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { what });
    }
    if value.len() > MAX_LABEL_LEN {
        return Err(NameError::TooLong { what, value: echo(value), max: MAX_LABEL_LEN });
    }
    let bytes = value.as_bytes();
    let ok_char = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.iter().all(ok_char) || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(NameError::NotALabel { what, value: echo(value) });
    }
    Ok(())
}

/// Checks a DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn check_subdomain(what: &'static str, value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { what });
    }
    if value.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { what, value: echo(value), max: MAX_NAME_LEN });
    }
    for label in value.split('.') {
        check_label(what, label).map_err(|_| NameError::NotALabel { what, value: echo(value) })?;
    }
    Ok(())
}

/// The part of the name space one control plane issues in: its namespace and the trust domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdentityDomain {
    control_plane_ns: Arc<str>,
    trust_domain: Arc<str>,
    service_name: IdentityName,
}

impl IdentityDomain {
    pub fn new(control_plane_ns: &str, trust_domain: &str) -> Result<Self, NameError> {
        check_label("control-plane namespace", control_plane_ns)?;
        check_subdomain("trust domain", trust_domain)?;
        // The identity service's own name: service account `identity` in the control-plane
        // namespace. Built here so that a trust domain too long for it is refused up front.
        let service_name: IdentityName = format!(
            "identity.{control_plane_ns}.serviceaccount.identity.{control_plane_ns}.{trust_domain}"
        )
        .parse()?;
        Ok(Self {
            control_plane_ns: control_plane_ns.into(),
            trust_domain: trust_domain.into(),
            service_name,
        })
    }

    pub fn control_plane_ns(&self) -> &str {
        &self.control_plane_ns
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The identity of service account `sa` in namespace `ns`.
    pub fn identity(&self, ns: &str, sa: &str) -> Result<IdentityName, NameError> {
        check_label("namespace", ns)?;
        check_label("service account", sa)?;
        let name = format!(
            "{sa}.{ns}.serviceaccount.identity.{}.{}",
            self.control_plane_ns, self.trust_domain
        );
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong {
                what: "identity name",
                value: echo(&name),
                max: MAX_NAME_LEN,
            });
        }
        Ok(IdentityName {
            name: name.into(),
            sa_len: sa.len(),
            ns_len: ns.len(),
            cp_ns_len: self.control_plane_ns.len(),
        })
    }

    /// The identity service's own name: service account `identity` in the control-plane
    /// namespace, as linkerd2-proxy's `*_SVC_NAME` settings expect.
    pub fn identity_service_name(&self) -> &IdentityName {
        &self.service_name
    }

    /// Parses `name` and checks that it belongs to this domain.
    pub fn parse(&self, name: &str) -> Result<IdentityName, NameError> {
        let id: IdentityName = name.parse()?;
        if id.control_plane_ns() != &*self.control_plane_ns
            || id.trust_domain() != &*self.trust_domain
        {
            return Err(NameError::ForeignDomain {
                name: name.to_owned(),
                found_ns: id.control_plane_ns().to_owned(),
                found_td: id.trust_domain().to_owned(),
                expected_ns: self.control_plane_ns.to_string(),
                expected_td: self.trust_domain.to_string(),
            });
        }
        Ok(id)
    }
}

/// A workload's identity name,
/// `<sa>.<ns>.serviceaccount.identity.<control-plane-ns>.<trust-domain>`.
///
/// Cheap to clone; the parts are slices of one shared string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityName {
    name: Arc<str>,
    sa_len: usize,
    ns_len: usize,
    cp_ns_len: usize,
}

const INFIX: &str = ".serviceaccount.identity.";

impl IdentityName {
    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn service_account(&self) -> &str {
        &self.name[..self.sa_len]
    }

    pub fn namespace(&self) -> &str {
        let start = self.sa_len + 1;
        &self.name[start..start + self.ns_len]
    }

    fn cp_start(&self) -> usize {
        self.sa_len + 1 + self.ns_len + INFIX.len()
    }

    pub fn control_plane_ns(&self) -> &str {
        let start = self.cp_start();
        &self.name[start..start + self.cp_ns_len]
    }

    pub fn trust_domain(&self) -> &str {
        &self.name[self.cp_start() + self.cp_ns_len + 1..]
    }

    pub fn spiffe_id(&self) -> SpiffeId {
        SpiffeId {
            trust_domain: self.trust_domain().into(),
            namespace: self.namespace().into(),
            service_account: self.service_account().into(),
        }
    }
}

impl FromStr for IdentityName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        let not_an_identity = || NameError::NotAnIdentity { value: echo(s) };
        if s.is_empty() {
            return Err(NameError::Empty { what: "identity name" });
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong {
                what: "identity name",
                value: echo(s),
                max: MAX_NAME_LEN,
            });
        }
        let mut parts = s.splitn(6, '.');
        let (Some(sa), Some(ns), Some("serviceaccount"), Some("identity"), Some(cp), Some(td)) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(not_an_identity());
        };
        check_label("service account", sa)?;
        check_label("namespace", ns)?;
        check_label("control-plane namespace", cp)?;
        check_subdomain("trust domain", td)?;
        Ok(IdentityName { name: s.into(), sa_len: sa.len(), ns_len: ns.len(), cp_ns_len: cp.len() })
    }
}

impl fmt::Display for IdentityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for IdentityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.name, f)
    }
}

/// `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`, the URI SAN of a leaf.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: Arc<str>,
    namespace: Arc<str>,
    service_account: Arc<str>,
}

impl SpiffeId {
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl FromStr for SpiffeId {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        let bad = || NameError::NotASpiffeId { value: echo(s) };
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        check_subdomain("trust domain", td)?;
        check_label("namespace", ns)?;
        check_label("service account", sa)?;
        Ok(SpiffeId { trust_domain: td.into(), namespace: ns.into(), service_account: sa.into() })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn domain() -> IdentityDomain {
        IdentityDomain::new("weft", "cluster.local").unwrap()
    }

    #[test]
    fn formats_the_documented_example() {
        let id = domain().identity("prod", "web").unwrap();
        assert_eq!(id.as_str(), "web.prod.serviceaccount.identity.weft.cluster.local");
        assert_eq!(id.to_string(), id.as_str());
        assert_eq!(id.service_account(), "web");
        assert_eq!(id.namespace(), "prod");
        assert_eq!(id.control_plane_ns(), "weft");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.spiffe_id().to_string(), "spiffe://cluster.local/ns/prod/sa/web");
    }

    #[test]
    fn parse_round_trips() {
        for s in [
            "web.prod.serviceaccount.identity.weft.cluster.local",
            "a.b.serviceaccount.identity.c.d",
            "default.default.serviceaccount.identity.linkerd.cluster.local",
            "x-1.y-2.serviceaccount.identity.z-3.example.com",
            "0.9.serviceaccount.identity.cp.a.b.c.d",
        ] {
            let id: IdentityName = s.parse().unwrap();
            assert_eq!(id.as_str(), s);
            let again = IdentityDomain::new(id.control_plane_ns(), id.trust_domain())
                .unwrap()
                .identity(id.namespace(), id.service_account())
                .unwrap();
            assert_eq!(again, id);
        }
    }

    #[test]
    fn parse_refuses_malformed_names() {
        for s in [
            "",
            "web",
            "web.prod",
            "web.prod.serviceaccount.identity.weft",
            "web.prod.serviceaccount.identity.weft.",
            "web.prod.sa.identity.weft.cluster.local",
            "web.prod.serviceaccount.identities.weft.cluster.local",
            "Web.prod.serviceaccount.identity.weft.cluster.local",
            "web.PROD.serviceaccount.identity.weft.cluster.local",
            "-web.prod.serviceaccount.identity.weft.cluster.local",
            "web-.prod.serviceaccount.identity.weft.cluster.local",
            "web.prod.serviceaccount.identity.weft.cluster..local",
            "web.prod.serviceaccount.identity.weft.cluster.local.",
            "web_1.prod.serviceaccount.identity.weft.cluster.local",
            ".prod.serviceaccount.identity.weft.cluster.local",
            "web..serviceaccount.identity.weft.cluster.local",
            "web.prod.serviceaccount.identity..cluster.local",
            "web.prod.serviceaccount.identity.weft.cluster.local:443",
            "*.prod.serviceaccount.identity.weft.cluster.local",
            "wéb.prod.serviceaccount.identity.weft.cluster.local",
        ] {
            assert!(s.parse::<IdentityName>().is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn label_length_limits() {
        let l63 = "a".repeat(63);
        let l64 = "a".repeat(64);
        assert!(check_label("x", &l63).is_ok());
        assert!(matches!(check_label("x", &l64), Err(NameError::TooLong { max: 63, .. })));
        assert!(domain().identity(&l63, "web").is_ok());
        assert!(domain().identity(&l64, "web").is_err());
        // A name over 253 characters is refused even when each label is fine.
        let td = [l63.as_str(), &l63, &l63].join(".");
        let d = IdentityDomain::new("weft", &td).unwrap();
        assert!(matches!(
            d.identity(&l63, "web"),
            Err(NameError::TooLong { what: "identity name", .. })
        ));
        let long = format!("web.{l63}.serviceaccount.identity.weft.{td}");
        assert!(long.parse::<IdentityName>().is_err());
    }

    #[test]
    fn label_characters() {
        for ok in ["a", "0", "a-b", "a--b", "abc123", "1a"] {
            assert!(check_label("x", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-", "-a", "a-", "A", "a.b", "a_b", "a b", "ä", "a/b"] {
            assert!(check_label("x", bad).is_err(), "{bad}");
        }
        for ok in ["a", "a.b", "cluster.local", "x-1.y"] {
            assert!(check_subdomain("x", ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "a.", ".a", "a..b", "A.b", "a_b.c"] {
            assert!(check_subdomain("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn domain_checks_its_parts() {
        assert!(IdentityDomain::new("weft", "cluster.local").is_ok());
        assert!(IdentityDomain::new("", "cluster.local").is_err());
        assert!(IdentityDomain::new("we.ft", "cluster.local").is_err());
        assert!(IdentityDomain::new("weft", "").is_err());
        assert!(IdentityDomain::new("weft", "Cluster.local").is_err());
        assert!(domain().identity("prod", "").is_err());
        assert!(domain().identity("", "web").is_err());
        assert!(domain().identity("prod", "web.x").is_err());
    }

    #[test]
    fn domain_parse_refuses_other_domains() {
        let d = domain();
        assert!(d.parse("web.prod.serviceaccount.identity.weft.cluster.local").is_ok());
        let err = d.parse("web.prod.serviceaccount.identity.other.cluster.local").unwrap_err();
        assert!(matches!(err, NameError::ForeignDomain { .. }));
        assert!(err.to_string().contains("\"other\""), "{err}");
        assert!(d.parse("web.prod.serviceaccount.identity.weft.example.com").is_err());
        assert!(d.parse("web.prod.serviceaccount.identity.weft.cluster.local.x").is_err());
    }

    #[test]
    fn identity_service_name() {
        assert_eq!(
            domain().identity_service_name().as_str(),
            "identity.weft.serviceaccount.identity.weft.cluster.local"
        );
    }

    #[test]
    fn spiffe_ids() {
        let id: SpiffeId = "spiffe://cluster.local/ns/prod/sa/web".parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "prod");
        assert_eq!(id.service_account(), "web");
        assert_eq!(id, domain().identity("prod", "web").unwrap().spiffe_id());
        for bad in [
            "",
            "spiffe://",
            "http://cluster.local/ns/prod/sa/web",
            "spiffe://cluster.local/ns/prod/sa/",
            "spiffe://cluster.local/ns/prod/sa/web/",
            "spiffe://cluster.local/ns/prod/sa/web/x",
            "spiffe://cluster.local/sa/web/ns/prod",
            "spiffe://cluster.local/ns/Prod/sa/web",
            "spiffe:///ns/prod/sa/web",
            "spiffe://Cluster.local/ns/prod/sa/web",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = "web.prod.serviceaccount.identity.weft.Cluster.local"
            .parse::<IdentityName>()
            .unwrap_err();
        assert!(err.to_string().contains("trust domain"), "{err}");
        let err = "web.prod".parse::<IdentityName>().unwrap_err();
        assert!(err.to_string().contains("<serviceaccount>.<namespace>"), "{err}");
    }

    #[test]
    fn echoed_input_is_cut() {
        assert_eq!(echo("web"), "\"web\"");
        let exact = "a".repeat(MAX_ECHO_BYTES);
        assert_eq!(echo(&exact), format!("{exact:?}"));
        let long = "a".repeat(64 * 1024);
        let shown = echo(&long);
        assert!(shown.len() < MAX_ECHO_BYTES + 32, "{shown}");
        assert!(shown.ends_with("… (65536 bytes)"), "{shown}");
        // Cut on a character boundary: 'é' is two bytes and straddles byte 256.
        let accented = format!("a{}", "é".repeat(200));
        let shown = echo(&accented);
        assert!(shown.starts_with("\"aéé") && shown.contains("é\"…"), "{shown}");
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("0123456789abc", 10), "0123456789… (13 bytes)");
    }

    #[test]
    fn errors_about_long_input_stay_short() {
        let huge = "a".repeat(64 * 1024);
        let label_err = check_label("namespace", &huge).unwrap_err().to_string();
        let name_err = huge.parse::<IdentityName>().unwrap_err().to_string();
        let spiffe_err = format!("spiffe://{huge}").parse::<SpiffeId>().unwrap_err().to_string();
        for msg in [label_err, name_err, spiffe_err] {
            assert!(msg.len() < 512, "{} bytes: {msg}", msg.len());
            assert!(msg.contains("bytes)"), "{msg}");
        }
    }
}
