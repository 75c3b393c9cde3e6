//! Tells the proxy whether its optimizer was guided by a profile, for `--version`: the
//! shipped binary is built with `-C profile-use` (README, "The static proxy binary") and a
//! training build with `-C profile-generate` (`scripts/pgo-train`).

fn main() {
    println!("cargo::rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let has = |flag: &str| flags.split('\x1f').any(|f| f.contains(flag));
    let pgo = if has("profile-use=") {
        "PGO"
    } else if has("profile-generate") {
        "PGO-instrumented"
    } else {
        ""
    };
    println!("cargo::rustc-env=WEFT_BUILD_PGO={pgo}");
}
