//! Parsers for the values of config annotations and injector flags. Each accepts exactly
//! what the consumer (`weft-proxy`, `weft-proxy init`, Kubernetes) accepts, and says why
//! not otherwise: an injector that guessed would render a pod that fails later, far from
//! the annotation that caused it.

use std::net::IpAddr;

pub use crate::quantity::Quantity;

/// A comma-separated list of ports and ranges (`25,8000-8100`), as `weft-proxy` reads
/// `WEFT_PROXY_OPAQUE_PORTS` and `weft-proxy init` its `--skip-*-ports`. Returns the list
/// normalized (items trimmed, empties dropped).
pub fn ports(s: &str) -> Result<String, String> {
    fn port(p: &str) -> Result<u16, String> {
        match p.trim().parse::<u16>() {
            Ok(n) if n > 0 && p.trim().bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(format!("{:?} is not a port (1-65535)", p.trim())),
        }
    }
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match item.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (port(lo)?, port(hi)?);
                if lo > hi {
                    return Err(format!("range {item:?} is backwards"));
                }
                out.push(format!("{lo}-{hi}"));
            }
            None => out.push(port(item)?.to_string()),
        }
    }
    Ok(out.join(","))
}

/// A comma-separated list of CIDRs, IPv4 and/or IPv6, with no host bits set (as
/// `weft-proxy init --skip-subnets` requires).
pub fn subnets(s: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((addr, prefix)) = item.split_once('/') else {
            return Err(format!("{item:?} is not a CIDR (e.g. 10.0.0.0/8)"));
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("{item:?}: bad address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u32 = match prefix.parse() {
            Ok(p)
                // At most 3 digits, as `weft-proxy init` takes them (`/0008` it refuses).
                if p <= max
                    && (1..=3).contains(&prefix.len())
                    && prefix.bytes().all(|b| b.is_ascii_digit()) =>
            {
                p
            }
            _ => return Err(format!("{item:?}: prefix must be 0-{max}")),
        };
        let host_bits_clear = match addr {
            IpAddr::V4(a) => u32::from(a).checked_shl(prefix).unwrap_or(0) == 0,
            IpAddr::V6(a) => u128::from(a).checked_shl(prefix).unwrap_or(0) == 0,
        };
        if !host_bits_clear {
            return Err(format!("{item:?} has host bits set"));
        }
        out.push(item.to_string());
    }
    Ok(out.join(","))
}

/// A Kubernetes resource quantity (`100m`, `0.5`, `64Mi`, `1e3`), as [`Quantity::parse`]
/// reads it, in base units, approximately: compare quantities as [`Quantity`]s, exactly,
/// as Kubernetes compares them.
pub fn quantity(s: &str) -> Result<f64, String> {
    Quantity::parse(s).map(Quantity::to_f64)
}

/// A user id for `runAsUser` of a container that must run as non-root: 1 to 2^31-1.
pub fn uid(s: &str) -> Result<i64, String> {
    match s.parse::<i64>() {
        Ok(0) => Err("0 is root; the proxy runs as non-root".to_string()),
        Ok(n) if (1..=i64::from(i32::MAX)).contains(&n) && !s.starts_with('+') => Ok(n),
        _ => Err(format!("{s:?} is not a user id (1-2147483647)")),
    }
}

/// `true` or `false`, exactly.
pub fn boolean(s: &str) -> Result<bool, String> {
    match s {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{s:?} is neither \"true\" nor \"false\"")),
    }
}

/// The longest duration `weft-proxy` takes for any setting (`MAX_DURATION` of its config,
/// 366 days): a longer grace period would be admitted here and crash-loop the proxy.
pub const MAX_DURATION_MS: u64 = 366 * 24 * 3600 * 1000;

/// A duration as `weft-proxy` reads it (`500ms`, `30s`, `2m`, `1h`; digits alone are
/// seconds; at most [`MAX_DURATION_MS`]), returned in milliseconds.
pub fn duration_ms(s: &str) -> Result<u64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 2m)"))?;
    // Checked: a saturated value would mean something else than what the proxy reads.
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    match ms {
        Some(ms) if ms <= MAX_DURATION_MS => Ok(ms),
        _ => Err(format!(
            "{s:?} is longer than a year (8784h), the longest duration weft-proxy takes"
        )),
    }
}

/// The access log format of the proxy (`--access-log`).
pub fn access_log(s: &str) -> Result<String, String> {
    match s {
        "apache" | "json" => Ok(s.to_string()),
        _ => Err(format!("{s:?} is not an access log format (apache or json)")),
    }
}

/// A tracing filter (`warn,weft_proxy=debug`), passed on unchanged. `weft-proxy` reads
/// `WEFT_PROXY_LOG` with tracing's `EnvFilter` and refuses to start on what it cannot parse
/// (`warn, weft_proxy=debug` with its space, `=debug`), so the same parser decides here.
/// Stricter on what it reads as something else: each directive must name its level, else
/// `loud`, `x=` or ` warn` (a space before it) would be a target logged at trace.
pub fn log_level(s: &str) -> Result<String, String> {
    use tracing_subscriber::{EnvFilter, filter::LevelFilter};
    const USAGE: &str =
        "use comma-separated [target=]level directives without spaces, e.g. warn,weft_proxy=debug";
    if s.contains(char::is_whitespace) {
        return Err(format!("{s:?} contains whitespace; {USAGE}"));
    }
    if let Err(e) = EnvFilter::try_new(s) {
        return Err(format!("{s:?} is not a log filter weft-proxy takes ({e}); {USAGE}"));
    }
    let mut any = false;
    for d in s.split(',').filter(|d| !d.is_empty()) {
        let level = d.rsplit_once('=').map_or(d, |(_, level)| level);
        if level.is_empty() || level.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "{d:?} names no level (off, error, warn, info, debug, trace): weft-proxy would log everything of a target {d:?}; {USAGE}"
            ));
        }
        any = true;
    }
    if !any {
        return Err(format!("empty log level; {USAGE}"));
    }
    Ok(s.to_string())
}

/// A container image reference: registry/repository with an optional tag and/or digest.
pub fn image(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 512
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
        && !s.starts_with(['/', ':', '@', '-', '.'])
        && !s.ends_with(['/', ':', '@']);
    if ok { Ok(s.to_string()) } else { Err(format!("{s:?} is not an image reference")) }
}

/// The default inbound policies that Linkerd-style proxies understand.
pub const INBOUND_POLICIES: [&str; 6] = [
    "all-unauthenticated",
    "all-authenticated",
    "cluster-unauthenticated",
    "cluster-authenticated",
    "audit",
    "deny",
];

pub fn inbound_policy(s: &str) -> Result<String, String> {
    if INBOUND_POLICIES.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not one of {}", INBOUND_POLICIES.join(", ")))
    }
}

/// The version an image reference names: its digest, else its tag, else `latest`.
pub fn image_version(image: &str) -> &str {
    if let Some((_, digest)) = image.split_once('@') {
        return digest;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    last.rsplit_once(':').map_or("latest", |(_, tag)| tag)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn port_lists() {
        assert_eq!(ports(" 25, 8000-8100 ,,").as_deref(), Ok("25,8000-8100"));
        assert_eq!(ports("").as_deref(), Ok(""));
        for bad in ["0", "65536", "http", "10-5", "+5", "1-", "-3", "5 6"] {
            assert!(ports(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subnet_lists() {
        assert_eq!(subnets("10.0.0.0/8, fd00::/8").as_deref(), Ok("10.0.0.0/8,fd00::/8"));
        assert!(subnets("0.0.0.0/0").is_ok());
        for bad in ["10.0.0.1/8", "10.0.0.0", "10.0.0.0/33", "fd00::/129", "x/8", "10.0.0.0/+8"] {
            assert!(subnets(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity("100m"), Ok(0.1));
        assert_eq!(quantity("64Mi"), Ok(64.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("1e3"), Ok(1000.0));
        assert_eq!(quantity("0.5"), Ok(0.5));
        assert_eq!(quantity("2"), Ok(2.0));
        assert_eq!(quantity("250u"), Ok(0.00025));
        assert_eq!(quantity("5n"), Ok(0.000000005));
        for bad in ["", "-1", "1x", "m", "1.2.3", " 1", "1Mib", "1e", "abc", "."] {
            assert!(quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scalars() {
        assert_eq!(uid("2102"), Ok(2102));
        for bad in ["0", "-1", "2147483648", "x", "+5", ""] {
            assert!(uid(bad).is_err(), "{bad}");
        }
        assert_eq!(boolean("false"), Ok(false));
        assert!(boolean("False").is_err() && boolean("yes").is_err());
        assert_eq!(duration_ms("30s"), Ok(30_000));
        assert_eq!(duration_ms("500ms"), Ok(500));
        assert_eq!(duration_ms("2m"), Ok(120_000));
        assert!(
            duration_ms("30 s").is_err() && duration_ms("s").is_err() && duration_ms("1d").is_err()
        );
        assert!(log_level("warn,weft_proxy=debug").is_ok());
        assert!(access_log("json").is_ok() && access_log("apache").is_ok());
        assert!(access_log("JSON").is_err() && access_log("").is_err());
        assert!(
            log_level("loud").is_err() && log_level("").is_err() && log_level("a b=info").is_err()
        );
        assert!(image("ghcr.io/weft-mesh/weft-proxy:1.2").is_ok());
        assert!(image("").is_err() && image("a b").is_err() && image("img:").is_err());
        assert!(inbound_policy("deny").is_ok() && inbound_policy("allow").is_err());
    }

    #[test]
    fn image_versions() {
        assert_eq!(image_version("ghcr.io/weft-mesh/weft-proxy:0.1.0"), "0.1.0");
        assert_eq!(image_version("localhost:5000/weft-proxy"), "latest");
        assert_eq!(image_version("x/p@sha256:abc"), "sha256:abc");
    }

    /// Found by the `config_values` fuzzer: `198E390` was accepted as an infinite quantity
    /// (which compares as "not above" any limit), and `100391840031101039` (seconds) as a
    /// duration whose milliseconds saturated, so the injector's grace period was not the
    /// one the proxy reads from the same value. Quantities are now exact, and at most
    /// 2^63-1 (see `Quantity`).
    #[test]
    fn overflowing_quantities_and_durations_are_refused() {
        assert!(quantity("198E390").is_err());
        assert!(quantity("1e308").is_err());
        assert!(quantity("1e18").is_ok());
        assert!(duration_ms("100391840031101039").is_err());
        assert!(duration_ms("5124095576030432h").is_err());
        assert!(duration_ms("18446744073709551ms").is_err());
    }

    /// The audit: `9000h` was accepted here, and `weft-proxy` refuses durations over a year
    /// (its `MAX_DURATION`), so the pod was admitted and its proxy crash-looped.
    #[test]
    fn durations_stop_where_the_proxys_do() {
        assert_eq!(duration_ms("8784h"), Ok(MAX_DURATION_MS));
        assert_eq!(duration_ms("31622400s"), Ok(MAX_DURATION_MS));
        assert_eq!(duration_ms("31622400000ms"), Ok(MAX_DURATION_MS));
        for long in ["8785h", "9000h", "31622401s", "31622400001ms", "527041m"] {
            let e = duration_ms(long).unwrap_err();
            assert!(e.contains("longer than a year"), "{long}: {e}");
        }
    }

    /// The audit: `warn, weft_proxy=debug` (a space after the comma), `=debug` and
    /// `warn,=warn` were accepted here and refused by `weft-proxy`'s EnvFilter, so the proxy
    /// never started. Every value accepted is passed on unchanged.
    #[test]
    fn log_levels_are_what_the_proxys_filter_takes() {
        for bad in [
            "warn, weft_proxy=debug",
            "=debug",
            "warn,=warn",
            "loud",
            "x=",
            " warn",
            "warn\n",
            "a b=info",
            "",
            " ",
            ",",
            "x=loud",
        ] {
            assert!(log_level(bad).is_err(), "{bad:?}");
        }
        let e = log_level("warn, weft_proxy=debug").unwrap_err();
        assert!(
            e.contains("warn, weft_proxy=debug") && e.contains("e.g. warn,weft_proxy=debug"),
            "{e}"
        );
        for good in [
            "warn",
            "WARN",
            "warn,weft_proxy=debug",
            "weft_proxy::http=trace",
            "info,weft_proxy[conn]=debug",
            "off",
            "3",
            "warn,,info",
        ] {
            assert_eq!(log_level(good).as_deref(), Ok(good));
        }
    }

    /// A prefix of more than 3 digits (`/0008`) was accepted here and refused by
    /// `weft-proxy init`, so the pod was admitted and its init container failed. Found by
    /// review; the `config_values` fuzz target checks the two agree.
    #[test]
    fn subnet_prefixes_are_read_as_init_reads_them() {
        assert!(subnets("10.0.0.0/0008").is_err());
        assert_eq!(subnets("10.0.0.0/008").as_deref(), Ok("10.0.0.0/008"));
    }
}
