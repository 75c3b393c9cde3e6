//! The nat rules `weft-proxy init` installs, as `iptables-restore` input: pure text in, text out.

use std::{
    fmt::{self, Write as _},
    net::IpAddr,
    str::FromStr,
};

use crate::config::PortSet;

/// Chain that PREROUTING jumps to: redirects inbound TCP to the inbound proxy.
pub const INBOUND_CHAIN: &str = "WEFT_INBOUND";
/// Chain that OUTPUT jumps to: redirects outbound TCP to the outbound proxy.
pub const OUTBOUND_CHAIN: &str = "WEFT_OUTBOUND";

/// The proxy's own ports, reached directly by probes and scrapers and never redirected:
/// 4190 (tap, as in Linkerd) and 4191 (admin).
pub const ALWAYS_SKIPPED_INBOUND_PORTS: (u16, u16) = (4190, 4191);

/// `-m multiport` accepts at most 15 port references per rule; a range counts as two.
const MULTIPORT_LIMIT: usize = 15;

/// The jumps into our chains: (builtin chain, our chain, comment).
const JUMPS: [(&str, &str, &str); 2] =
    [("PREROUTING", INBOUND_CHAIN, "inbound"), ("OUTPUT", OUTBOUND_CHAIN, "outbound")];

/// An IP family: each has its own tables, binaries and skipped subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Prefix of the family's binaries (`iptables-nft-restore`, `ip6tables-legacy-save`, ...).
    pub fn command(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn max_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// What `rules` needs from the command line (a view of `InitArgs`, so tests build it directly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleConfig {
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub proxy_uid: u32,
    pub skip_inbound_ports: PortSet,
    pub skip_outbound_ports: PortSet,
    pub skip_subnets: Subnets,
}

/// Our two chains (declaring them in `--noflush` input empties them, so re-running replaces
/// them) and their rules, without the table header, the jumps into them or `COMMIT`.
pub fn rules(config: &RuleConfig, family: Family) -> String {
    let RuleConfig {
        inbound_port,
        outbound_port,
        proxy_uid,
        skip_inbound_ports,
        skip_outbound_ports,
        skip_subnets,
    } = config;
    let mut out = String::new();
    let mut rule = |chain: &str, matches: &str, comment: &str, target: &str| {
        // Same word order as `iptables-save` prints, so the input reads like the saved table.
        let _ = writeln!(
            out,
            "-A {chain} {matches} -m comment --comment \"weft/{comment}\" -j {target}"
        );
    };

    let mut inbound_skipped = skip_inbound_ports.ranges().to_vec();
    inbound_skipped.push(ALWAYS_SKIPPED_INBOUND_PORTS);
    for ports in multiport_groups(&inbound_skipped) {
        let matches = format!("-p tcp -m multiport --dports {ports}");
        rule(INBOUND_CHAIN, &matches, "inbound-skip-ports", "RETURN");
    }
    rule(
        INBOUND_CHAIN,
        "-p tcp",
        "inbound-redirect",
        &format!("REDIRECT --to-ports {inbound_port}"),
    );

    // The proxy's own connections leave as they are: redirecting them would loop.
    let uid = format!("-m owner --uid-owner {proxy_uid}");
    rule(OUTBOUND_CHAIN, &uid, "outbound-skip-proxy-uid", "RETURN");
    rule(OUTBOUND_CHAIN, "-o lo", "outbound-skip-loopback", "RETURN");
    for ports in multiport_groups(skip_outbound_ports.ranges()) {
        let matches = format!("-p tcp -m multiport --dports {ports}");
        rule(OUTBOUND_CHAIN, &matches, "outbound-skip-ports", "RETURN");
    }
    for subnet in skip_subnets.of(family) {
        rule(OUTBOUND_CHAIN, &format!("-d {subnet}"), "outbound-skip-subnet", "RETURN");
    }
    rule(
        OUTBOUND_CHAIN,
        "-p tcp",
        "outbound-redirect",
        &format!("REDIRECT --to-ports {outbound_port}"),
    );

    let mut text = format!(":{INBOUND_CHAIN} - [0:0]\n:{OUTBOUND_CHAIN} - [0:0]\n");
    text.push_str(&out);
    text
}

/// The complete `iptables-restore --noflush` input for one family, given what
/// `iptables-save -t nat` shows now: our chains are (re)declared and refilled, and the jumps
/// into them are added only where missing, so running init again changes nothing.
pub fn plan(config: &RuleConfig, family: Family, current_save: &str) -> String {
    let mut input = String::from("*nat\n");
    input.push_str(&rules(config, family));
    for (from, to, comment) in JUMPS {
        if !has_jump(current_save, from, to) {
            let _ = writeln!(input, "-A {from} -m comment --comment \"weft/{comment}\" -j {to}");
        }
    }
    input.push_str("COMMIT\n");
    input
}

/// Input that puts a nat table back the way `iptables-save -t nat` showed it (used without
/// `--noflush`, it replaces the whole table, our chains included).
pub fn rollback_input(snapshot: &str) -> String {
    let nat: Vec<&str> = table_lines(snapshot, "nat").collect();
    let mut input = String::from("*nat\n");
    if nat.is_empty() {
        // The table was not there: leave it empty.
        for chain in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
            let _ = writeln!(input, ":{chain} ACCEPT [0:0]");
        }
    }
    for line in nat {
        input.push_str(line);
        input.push('\n');
    }
    input.push_str("COMMIT\n");
    input
}

/// Rules (`-A` lines) in the nat and filter tables of an `iptables-save` output; used to see
/// which backend the node already uses.
pub fn count_rules(save: &str) -> usize {
    ["nat", "filter"]
        .into_iter()
        .map(|table| table_lines(save, table).filter(|l| l.starts_with("-A ")).count())
        .sum()
}

/// Whether the saved nat table has a rule in `from` that jumps to `to`.
fn has_jump(save: &str, from: &str, to: &str) -> bool {
    table_lines(save, "nat").any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        // `iptables-save` prints the target last; a jump to a chain takes no target options.
        words.len() >= 4 && words[..2] == ["-A", from] && words[words.len() - 2..] == ["-j", to]
    })
}

/// The lines of `table` in an `iptables-save` output, between `*table` and `COMMIT`.
fn table_lines<'a>(save: &'a str, table: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let mut inside = false;
    save.lines().map(str::trim).filter(move |line| {
        if let Some(name) = line.strip_prefix('*') {
            inside = name == table;
            return false;
        }
        if *line == "COMMIT" {
            inside = false;
            return false;
        }
        inside && !line.is_empty() && !line.starts_with('#')
    })
}

/// Port lists for `-m multiport --dports` (`a:b` for ranges), each within the multiport limit,
/// from ranges sorted and merged (so duplicates and overlaps cost nothing).
pub fn multiport_groups(ranges: &[(u16, u16)]) -> Vec<String> {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(sorted.len());
    for (lo, hi) in sorted {
        match merged.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }

    let mut groups = Vec::new();
    let (mut group, mut used) = (Vec::new(), 0);
    for (lo, hi) in merged {
        let (item, cost) = if lo == hi { (lo.to_string(), 1) } else { (format!("{lo}:{hi}"), 2) };
        if used + cost > MULTIPORT_LIMIT {
            groups.push(std::mem::take(&mut group).join(","));
            used = 0;
        }
        group.push(item);
        used += cost;
    }
    if !group.is_empty() {
        groups.push(group.join(","));
    }
    groups
}

/// An IP subnet: an address with no host bits set and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this subnet (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.family() == family_of(ip) && mask(ip, self.prefix) == self.addr
    }

    pub fn family(&self) -> Family {
        family_of(self.addr)
    }

    /// Every IPv4 address.
    pub const ALL_V4: Cidr = Cidr { addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), prefix: 0 };
    /// Every IPv6 address.
    pub const ALL_V6: Cidr = Cidr { addr: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), prefix: 0 };

    /// The subnet of `addr` with `prefix` bits (host bits cleared); `None` when the prefix
    /// is too long for the family.
    pub fn masked(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let addr = addr.to_canonical();
        (prefix <= family_of(addr).max_prefix()).then(|| Cidr { addr: mask(addr, prefix), prefix })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error(
        "{0:?} is not a subnet: expected an address and a prefix length, e.g. 10.0.0.0/8 or fd00::/8"
    )]
    Syntax(String),
    #[error("{0:?} is not a subnet: its address is not an IPv4 or IPv6 address")]
    Address(String),
    #[error("{input:?} is not a subnet: an {family} prefix length is a number from 0 to {max}")]
    Prefix { input: String, family: Family, max: u8 },
    #[error("{input:?} has host bits set: did you mean {network}?")]
    HostBits { input: String, network: Cidr },
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| CidrError::Syntax(s.to_string()))?;
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::Address(s.to_string()))?;
        let family = family_of(addr);
        let max = family.max_prefix();
        let bad_prefix = || CidrError::Prefix { input: s.to_string(), family, max };
        // Digits only: `u8::from_str` would also take a leading `+`.
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad_prefix());
        }
        let prefix: u8 = prefix.parse().map_err(|_| bad_prefix())?;
        if prefix > max {
            return Err(bad_prefix());
        }
        let network = Cidr { addr: mask(addr, prefix), prefix };
        if network.addr != addr {
            return Err(CidrError::HostBits { input: s.to_string(), network });
        }
        Ok(network)
    }
}

fn family_of(addr: IpAddr) -> Family {
    match addr {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

/// `addr` with its host bits (those after the first `prefix`) cleared.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & bits).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & bits).into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A comma-separated list of subnets, IPv4 and IPv6 mixed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subnets(Vec<Cidr>);

impl Subnets {
    /// The subnets of one family, in the order given.
    pub fn of(&self, family: Family) -> impl Iterator<Item = &Cidr> + '_ {
        self.0.iter().filter(move |c| c.family() == family)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Cidr> + '_ {
        self.0.iter()
    }
}

impl FromStr for Subnets {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(Subnets)
    }
}

impl fmt::Display for Subnets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, cidr) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{cidr}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RuleConfig {
        RuleConfig {
            inbound_port: 4143,
            outbound_port: 4140,
            proxy_uid: 2102,
            skip_inbound_ports: PortSet::default(),
            skip_outbound_ports: PortSet::default(),
            skip_subnets: Subnets::default(),
        }
    }

    fn ports(s: &str) -> PortSet {
        s.parse().expect("valid ports")
    }

    fn subnets(s: &str) -> Subnets {
        s.parse().expect("valid subnets")
    }

    const EMPTY_SAVE: &str = "# Generated by iptables-save v1.8.9\n*nat\n:PREROUTING ACCEPT [0:0]\n\
        :INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n# Completed\n";

    #[test]
    fn default_rules() {
        let expected = "\
:WEFT_INBOUND - [0:0]
:WEFT_OUTBOUND - [0:0]
-A WEFT_INBOUND -p tcp -m multiport --dports 4190:4191 -m comment --comment \"weft/inbound-skip-ports\" -j RETURN
-A WEFT_INBOUND -p tcp -m comment --comment \"weft/inbound-redirect\" -j REDIRECT --to-ports 4143
-A WEFT_OUTBOUND -m owner --uid-owner 2102 -m comment --comment \"weft/outbound-skip-proxy-uid\" -j RETURN
-A WEFT_OUTBOUND -o lo -m comment --comment \"weft/outbound-skip-loopback\" -j RETURN
-A WEFT_OUTBOUND -p tcp -m comment --comment \"weft/outbound-redirect\" -j REDIRECT --to-ports 4140
";
        assert_eq!(rules(&config(), Family::V4), expected);
        assert_eq!(rules(&config(), Family::V6), expected);
    }

    #[test]
    fn rules_follow_the_config() {
        let config = RuleConfig {
            inbound_port: 5000,
            outbound_port: 5001,
            proxy_uid: 0,
            skip_inbound_ports: ports("22,8000-8100"),
            skip_outbound_ports: ports("443,5432"),
            skip_subnets: subnets("10.96.0.0/12, fd00::/8,192.168.0.0/16"),
        };
        let v4 = rules(&config, Family::V4);
        let lines: Vec<&str> = v4.lines().collect();
        assert_eq!(
            lines[2],
            "-A WEFT_INBOUND -p tcp -m multiport --dports 22,4190:4191,8000:8100 -m comment --comment \"weft/inbound-skip-ports\" -j RETURN"
        );
        assert!(lines[3].ends_with("-j REDIRECT --to-ports 5000"), "{v4}");
        assert!(lines[4].starts_with("-A WEFT_OUTBOUND -m owner --uid-owner 0 "), "{v4}");
        assert!(lines[5].starts_with("-A WEFT_OUTBOUND -o lo "), "{v4}");
        assert_eq!(
            lines[6],
            "-A WEFT_OUTBOUND -p tcp -m multiport --dports 443,5432 -m comment --comment \"weft/outbound-skip-ports\" -j RETURN"
        );
        assert_eq!(
            lines[7],
            "-A WEFT_OUTBOUND -d 10.96.0.0/12 -m comment --comment \"weft/outbound-skip-subnet\" -j RETURN"
        );
        assert!(lines[8].starts_with("-A WEFT_OUTBOUND -d 192.168.0.0/16 "), "{v4}");
        assert!(lines[9].ends_with("-j REDIRECT --to-ports 5001"), "{v4}");
        assert_eq!(lines.len(), 10);
        assert!(!v4.contains("fd00"));

        let v6 = rules(&config, Family::V6);
        assert!(v6.contains("-A WEFT_OUTBOUND -d fd00::/8 -m comment"), "{v6}");
        assert!(!v6.contains("10.96.0.0") && !v6.contains("192.168"), "{v6}");
        assert_eq!(v6.lines().count(), 9);
    }

    #[test]
    fn the_proxy_ports_are_skipped_even_when_listed() {
        let config = RuleConfig { skip_inbound_ports: ports("4191,4190,4191-4195"), ..config() };
        let text = rules(&config, Family::V4);
        assert!(text.contains("--dports 4190:4195 "), "{text}");
        assert_eq!(text.matches("inbound-skip-ports").count(), 1);
    }

    #[test]
    fn long_port_lists_are_split_into_several_rules() {
        let many: Vec<String> = (1..=40).map(|p| (p * 10).to_string()).collect();
        let config = RuleConfig {
            skip_inbound_ports: ports(&many.join(",")),
            skip_outbound_ports: ports(&many.join(",")),
            ..config()
        };
        let text = rules(&config, Family::V4);
        // 40 ports plus the 4190:4191 range (2 references) = 42 references: 15 + 15 + 12.
        assert_eq!(text.matches("inbound-skip-ports").count(), 3, "{text}");
        assert_eq!(text.matches("outbound-skip-ports").count(), 3, "{text}");
    }

    #[test]
    fn multiport_groups_respect_the_limit() {
        assert!(multiport_groups(&[]).is_empty());
        assert_eq!(multiport_groups(&[(80, 80)]), ["80"]);
        assert_eq!(multiport_groups(&[(9, 9), (1, 3), (2, 5), (6, 6)]), ["1:6,9"]);
        assert_eq!(multiport_groups(&[(1, 65535), (80, 80)]), ["1:65535"]);
        assert_eq!(multiport_groups(&[(65535, 65535), (65534, 65534)]), ["65534:65535"]);

        let singles: Vec<(u16, u16)> = (1..=16).map(|p| (p * 2, p * 2)).collect();
        let groups = multiport_groups(&singles);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].split(',').count(), 15);
        assert_eq!(groups[1], "32");

        // Seven ranges (14 references) and a range: the range does not fit in the first rule.
        let ranges: Vec<(u16, u16)> = (1..=8).map(|i| (i * 10, i * 10 + 1)).collect();
        let groups = multiport_groups(&ranges);
        assert_eq!(groups, ["10:11,20:21,30:31,40:41,50:51,60:61,70:71", "80:81"]);
        // ... but a single port does.
        let mut mixed = ranges[..7].to_vec();
        mixed.push((99, 99));
        assert_eq!(multiport_groups(&mixed).len(), 1);

        for n in 0..200u16 {
            let input: Vec<(u16, u16)> = (0..n).map(|i| (i * 3 + 1, i * 3 + 1 + i % 2)).collect();
            for group in multiport_groups(&input) {
                let refs: usize =
                    group.split(',').map(|p| if p.contains(':') { 2 } else { 1 }).sum();
                assert!(refs <= MULTIPORT_LIMIT, "{group}");
            }
        }
    }

    #[test]
    fn a_first_plan_adds_the_jumps() {
        let input = plan(&config(), Family::V4, EMPTY_SAVE);
        let expected = format!(
            "*nat\n{}-A PREROUTING -m comment --comment \"weft/inbound\" -j WEFT_INBOUND\n\
             -A OUTPUT -m comment --comment \"weft/outbound\" -j WEFT_OUTBOUND\nCOMMIT\n",
            rules(&config(), Family::V4)
        );
        assert_eq!(input, expected);
        // An empty or missing table is the same as one without jumps.
        assert_eq!(plan(&config(), Family::V4, ""), expected);
    }

    #[test]
    fn a_second_plan_only_refills_the_chains() {
        let first = plan(&config(), Family::V4, EMPTY_SAVE);
        // What `iptables-save -t nat` shows after the first run.
        let saved = format!(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{}",
            first.lines().skip(1).map(|l| format!("{l}\n")).collect::<String>()
        );
        let second = plan(&config(), Family::V4, &saved);
        assert_eq!(second, format!("*nat\n{}COMMIT\n", rules(&config(), Family::V4)));
        assert!(!second.contains("-A PREROUTING") && !second.contains("-A OUTPUT"));
    }

    #[test]
    fn existing_jumps_are_recognised_in_any_form() {
        let only_prerouting = "*nat\n-A PREROUTING -p tcp -j WEFT_INBOUND\nCOMMIT\n";
        let input = plan(&config(), Family::V4, only_prerouting);
        assert!(!input.contains("-A PREROUTING"));
        assert!(
            input.contains("-A OUTPUT -m comment --comment \"weft/outbound\" -j WEFT_OUTBOUND")
        );

        // Only the nat table counts, and only jumps to exactly our chains.
        let elsewhere = "*filter\n-A OUTPUT -j WEFT_OUTBOUND\nCOMMIT\n*nat\n\
            -A OUTPUT -j WEFT_OUTBOUND_OLD\n-A OUTPUT -m comment --comment \"-j WEFT_OUTBOUND\" -j ACCEPT\n\
            -A PREROUTING -j WEFT_OUTBOUND\nCOMMIT\n";
        let input = plan(&config(), Family::V4, elsewhere);
        assert!(input.contains("-A PREROUTING -m comment"), "{input}");
        assert!(input.contains("-A OUTPUT -m comment"), "{input}");
    }

    #[test]
    fn rollback_restores_the_snapshot() {
        let snapshot = "# Generated\n*filter\n-A INPUT -j DROP\nCOMMIT\n*nat\n:PREROUTING ACCEPT [3:180]\n\
            :KUBE - [0:0]\n-A PREROUTING -j KUBE\nCOMMIT\n# Completed\n";
        assert_eq!(
            rollback_input(snapshot),
            "*nat\n:PREROUTING ACCEPT [3:180]\n:KUBE - [0:0]\n-A PREROUTING -j KUBE\nCOMMIT\n"
        );
        assert_eq!(
            rollback_input(""),
            "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             :POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
        );
    }

    #[test]
    fn rules_are_counted_in_nat_and_filter() {
        assert_eq!(count_rules(""), 0);
        assert_eq!(count_rules(EMPTY_SAVE), 0);
        let save = "*mangle\n-A PREROUTING -j MARK --set-mark 1\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n\
            -A INPUT -j DROP\n-A FORWARD -j DROP\nCOMMIT\n*nat\n-A OUTPUT -j KUBE\nCOMMIT\n";
        assert_eq!(count_rules(save), 3);
    }

    #[test]
    fn cidrs_parse_strictly() {
        for ok in [
            "10.0.0.0/8",
            "0.0.0.0/0",
            "192.168.1.7/32",
            "fd00::/8",
            "::/0",
            "::1/128",
            "2001:db8::/32",
        ] {
            let cidr: Cidr = ok.parse().unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(cidr.to_string(), ok);
        }
        assert_eq!("10.0.0.0/8".parse::<Cidr>().map(|c| c.family()), Ok(Family::V4));
        assert_eq!("fd00::/8".parse::<Cidr>().map(|c| c.family()), Ok(Family::V6));

        let syntax = |s: &str| CidrError::Syntax(s.to_string());
        let address = |s: &str| CidrError::Address(s.to_string());
        let v4_prefix =
            |s: &str| CidrError::Prefix { input: s.to_string(), family: Family::V4, max: 32 };
        let v6_prefix =
            |s: &str| CidrError::Prefix { input: s.to_string(), family: Family::V6, max: 128 };
        let cases = [
            ("10.0.0.0", syntax("10.0.0.0")),
            ("", syntax("")),
            ("10.0.0/8", address("10.0.0/8")),
            ("10.0.0.256/32", address("10.0.0.256/32")),
            ("example.com/8", address("example.com/8")),
            (" 10.0.0.0/8", address(" 10.0.0.0/8")),
            ("fe80::%eth0/64", address("fe80::%eth0/64")),
            ("10.0.0.0/33", v4_prefix("10.0.0.0/33")),
            ("10.0.0.0/", v4_prefix("10.0.0.0/")),
            ("10.0.0.0/+8", v4_prefix("10.0.0.0/+8")),
            ("10.0.0.0/-1", v4_prefix("10.0.0.0/-1")),
            ("10.0.0.0/8/8", v4_prefix("10.0.0.0/8/8")),
            ("10.0.0.0/0008", v4_prefix("10.0.0.0/0008")),
            ("10.0.0.0/300", v4_prefix("10.0.0.0/300")),
            ("fd00::/129", v6_prefix("fd00::/129")),
            ("fd00::/ 8", v6_prefix("fd00::/ 8")),
        ];
        for (input, err) in cases {
            assert_eq!(input.parse::<Cidr>(), Err(err), "{input}");
        }
    }

    #[test]
    fn cidrs_with_host_bits_are_refused_with_a_suggestion() {
        let err = "10.0.0.1/8".parse::<Cidr>().expect_err("host bits");
        assert_eq!(err.to_string(), "\"10.0.0.1/8\" has host bits set: did you mean 10.0.0.0/8?");
        let err = "fd00::1/64".parse::<Cidr>().expect_err("host bits");
        assert_eq!(err.to_string(), "\"fd00::1/64\" has host bits set: did you mean fd00::/64?");
        let err = "255.255.255.255/0".parse::<Cidr>().expect_err("host bits");
        assert!(err.to_string().ends_with("did you mean 0.0.0.0/0?"), "{err}");
        assert!("10.1.0.0/15".parse::<Cidr>().is_err());
        assert!("10.2.0.0/15".parse::<Cidr>().is_ok());
    }

    #[test]
    fn subnet_lists() {
        let list = subnets(" 10.0.0.0/8,,fd00::/8 , 172.16.0.0/12");
        assert_eq!(list.to_string(), "10.0.0.0/8,fd00::/8,172.16.0.0/12");
        let v4: Vec<String> = list.of(Family::V4).map(ToString::to_string).collect();
        assert_eq!(v4, ["10.0.0.0/8", "172.16.0.0/12"]);
        assert_eq!(list.of(Family::V6).count(), 1);
        assert!(subnets("").is_empty());
        assert_eq!(
            "10.0.0.0/8,10.0.0.1/8".parse::<Subnets>().map_err(|e| e.to_string()),
            Err("\"10.0.0.1/8\" has host bits set: did you mean 10.0.0.0/8?".to_string())
        );
    }
}
