//! `weft certs`: generate the PKI the identity service needs (a trust anchor and an issuer),
//! and inspect certificate files.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use weft_identity::pki::{self, CertSummary, PkiParams};

use crate::identity::parse_duration;

#[derive(Debug, Clone, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Debug, Clone, Subcommand)]
enum CertsCommand {
    /// Write a trust anchor (ca.crt) and an issuer (issuer.crt, issuer.key) for the identity
    /// service and the Helm chart.
    Generate(GenerateArgs),
    /// Print the subject, names, validity and chain of the certificates in a PEM file.
    Inspect(InspectArgs),
}

#[derive(Debug, Clone, Args)]
struct GenerateArgs {
    /// Directory to write into (created if missing).
    #[arg(long, env = "WEFT_CERTS_OUT_DIR", default_value = ".")]
    out_dir: PathBuf,
    /// Overwrite existing files.
    #[arg(long, env = "WEFT_CERTS_FORCE")]
    force: bool,
    /// Trust domain; names the certificates (`root.<td>`, `identity.<td>`).
    #[arg(long, env = "WEFT_CERTS_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Lifetime of the trust anchor.
    #[arg(long, env = "WEFT_CERTS_ANCHOR_LIFETIME", default_value = "3650d", value_parser = parse_duration)]
    anchor_lifetime: Duration,
    /// Lifetime of the issuer.
    #[arg(long, env = "WEFT_CERTS_ISSUER_LIFETIME", default_value = "365d", value_parser = parse_duration)]
    issuer_lifetime: Duration,
    /// Also write the trust anchor's key (ca.key), to sign future issuers with it. Keep it
    /// offline: whoever holds it can mint any identity.
    #[arg(long, env = "WEFT_CERTS_WRITE_ANCHOR_KEY")]
    write_anchor_key: bool,
    /// Sign the new issuer with this existing anchor instead of creating one (issuer
    /// rotation under the same root); needs --anchor-key.
    #[arg(long, env = "WEFT_CERTS_ANCHOR_CERT", requires = "anchor_key")]
    anchor_cert: Option<PathBuf>,
    /// The existing anchor's key (PEM).
    #[arg(long, env = "WEFT_CERTS_ANCHOR_KEY", requires = "anchor_cert")]
    anchor_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
struct InspectArgs {
    /// A PEM file with one or more certificates (a leaf, a chain, a bundle).
    file: PathBuf,
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    match args.command {
        CertsCommand::Generate(a) => generate(a),
        CertsCommand::Inspect(a) => inspect(&a.file, &mut std::io::stdout().lock()),
    }
}

fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let GenerateArgs {
        out_dir,
        force,
        trust_domain,
        anchor_lifetime,
        issuer_lifetime,
        write_anchor_key,
        anchor_cert,
        anchor_key,
    } = args;
    weft_identity::name::check_subdomain("trust domain", &trust_domain)?;
    if issuer_lifetime > anchor_lifetime {
        bail!(
            "--issuer-lifetime must not exceed --anchor-lifetime (an issuer cannot outlive its anchor)"
        );
    }
    let params = PkiParams {
        anchor_lifetime,
        issuer_lifetime,
        ..PkiParams::for_trust_domain(&trust_domain)
    };
    let mut files: Vec<(&str, String, bool)> = match (anchor_cert, anchor_key) {
        (Some(cert), Some(key)) => {
            let cert_pem =
                std::fs::read(&cert).with_context(|| format!("reading {}", cert.display()))?;
            let key_pem =
                std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?;
            let (issuer, issuer_key) = pki::generate_issuer(&cert_pem, &key_pem, &params)?;
            let anchor =
                String::from_utf8(cert_pem).context("the anchor certificate is not text")?;
            vec![
                ("ca.crt", anchor, false),
                ("issuer.crt", issuer, false),
                ("issuer.key", issuer_key, true),
            ]
        }
        _ => {
            let g = pki::generate_pki(&params)?;
            let mut v = vec![
                ("ca.crt", g.anchor_pem, false),
                ("issuer.crt", g.issuer_pem, false),
                ("issuer.key", g.issuer_key_pem, true),
            ];
            if write_anchor_key {
                v.push(("ca.key", g.anchor_key_pem, true));
            }
            v
        }
    };
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    // All or nothing: check every target before writing any.
    if !force {
        let existing: Vec<_> = files
            .iter()
            .map(|(name, _, _)| out_dir.join(name))
            .filter(|p| p.symlink_metadata().is_ok())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            bail!("refusing to overwrite {} (use --force)", existing.join(", "));
        }
    }
    for (name, pem, secret) in files.drain(..) {
        let path = out_dir.join(name);
        write_file(&path, pem.as_bytes(), secret)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    println!(
        "trust anchor valid {}, issuer valid {}; install with:\n  \
         helm install weft charts/weft -n weft --create-namespace \\\n    \
         --set-file identity.trustAnchorsPEM={ca} \\\n    \
         --set-file identity.issuer.crtPEM={crt} \\\n    \
         --set-file identity.issuer.keyPEM={key}",
        human(anchor_lifetime),
        human(issuer_lifetime),
        ca = out_dir.join("ca.crt").display(),
        crt = out_dir.join("issuer.crt").display(),
        key = out_dir.join("issuer.key").display(),
    );
    Ok(())
}

/// Writes through a temporary file and a rename, so a reader never sees half a file; keys
/// are readable by the owner only.
fn write_file(path: &Path, data: &[u8], secret: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp-weft");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn human(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 2 * 86400 => format!("{} days", s / 86400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s if s >= 120 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

fn inspect(file: &Path, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let pem = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let certs = pki::parse_certs_pem(&file.display().to_string(), &pem)?;
    let now = weft_identity::pki::format_time(unix_now());
    writeln!(out, "{}: {} certificate(s); now {now}", file.display(), certs.len())?;
    for (i, der) in certs.iter().enumerate() {
        let s = CertSummary::parse(der)?;
        let ca = match (s.is_ca, s.path_len) {
            (true, Some(n)) => format!("yes (path length {n})"),
            (true, None) => "yes".to_owned(),
            (false, _) => "no".to_owned(),
        };
        let remaining = s.not_after - unix_now();
        let state = if remaining <= 0 {
            "EXPIRED".to_owned()
        } else if s.not_before > unix_now() {
            "NOT YET VALID".to_owned()
        } else {
            format!("expires in {}", human(Duration::from_secs(remaining.unsigned_abs())))
        };
        let mut usage = vec![];
        if s.key_cert_sign {
            usage.push("certificate signing");
        }
        if s.server_auth {
            usage.push("TLS server");
        }
        if s.client_auth {
            usage.push("TLS client");
        }
        writeln!(out, "\n#{}", i + 1)?;
        writeln!(out, "  subject:   {}", s.subject)?;
        writeln!(
            out,
            "  issuer:    {}{}",
            s.issuer,
            if s.self_signed { " (self-signed)" } else { "" }
        )?;
        writeln!(out, "  serial:    {}", s.serial)?;
        writeln!(out, "  key:       {}", s.key_algorithm)?;
        if !s.dns_names.is_empty() {
            writeln!(out, "  DNS SANs:  {}", s.dns_names.join(", "))?;
        }
        if !s.uris.is_empty() {
            writeln!(out, "  URI SANs:  {}", s.uris.join(", "))?;
        }
        writeln!(
            out,
            "  validity:  {} .. {} ({state})",
            pki::format_time(s.not_before),
            pki::format_time(s.not_after)
        )?;
        writeln!(out, "  CA:        {ca}")?;
        if !usage.is_empty() {
            writeln!(out, "  usage:     {}", usage.join(", "))?;
        }
    }
    writeln!(out, "\nchain:")?;
    for (i, der) in certs.iter().enumerate() {
        let s = CertSummary::parse(der)?;
        let link = if s.self_signed {
            "self-signed root".to_owned()
        } else if let Some(j) = certs.iter().position(|p| p != der && pki::is_signed_by(der, p)) {
            let order = if j == i + 1 { "" } else { " (out of order: the issuer should follow)" };
            format!("signed by #{}{order}", j + 1)
        } else {
            format!("issuer {} is not in this file", s.issuer)
        };
        writeln!(out, "  #{} {} -> {link}", i + 1, s.subject)?;
    }
    Ok(())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
