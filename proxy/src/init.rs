//! TEMPORARY placeholder so the crate compiles while `init` is being written (helper owns this file).
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {}
pub fn run(_args: &InitArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
