//! The Weft proxy injector: the pure pod-patch builder ([`patch::build`]), the admission
//! webhook around it ([`admission`], [`server`]), the namespace cache it reads
//! ([`namespaces`]), and manifest injection for `weft inject` ([`manifest`]).

pub mod admission;
pub mod annotations;
pub mod config;
pub mod manifest;
pub mod metrics;
pub mod namespaces;
pub mod patch;
pub mod probes;
pub mod quantity;
pub mod server;
pub mod spec;
pub mod tls;
pub mod values;
pub mod yaml;

pub use config::InjectorConfig;
pub use patch::{Outcome, Report, Skip, build};
