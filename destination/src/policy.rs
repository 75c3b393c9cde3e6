//! Inbound authorization policy (`io.linkerd.proxy.inbound.InboundServerPolicies`): which
//! clients a pod's proxy admits on each port, and how it reads the port's protocol.
//!
//! Linkerd's semantics with our API group: `Server`, `AuthorizationPolicy`,
//! `MeshTLSAuthentication` and `NetworkAuthentication` in `policy.weft.dev/v1beta1`, and
//! `HTTPRoute` in `policy.weft.dev/v1beta3`, and `HTTPLocalRateLimitPolicy` in
//! `policy.weft.dev/v1alpha1`, with the schemas of `policy.linkerd.io`, so that a user migrates by changing `apiVersion`. A port
//! that no `Server` selects gets the default policy of its pod (annotation
//! `config.weft.dev/default-inbound-policy`), else of its namespace, else of the cluster.
//!
//! Layers, as in the discovery half of the crate:
//! - [`model`]: the objects reduced to what policy needs (pure, lenient: a bad object is a
//!   [`crate::model::Problem`], never a panic);
//! - [`index`]: objects in, a `Server` message per pod port out, pushed to followers when
//!   it changes (pure);
//! - [`route`]: `HTTPRoute`s (ours, and the Gateway API's with Server parents) and the
//!   Gateway API's `GRPCRoute`s, which replace a Server's default route with their own;
//! - [`rate_limit`]: `HTTPLocalRateLimitPolicy`s, a Server's HTTP request rates;
//! - [`proto`]: the protobuf messages (routes, authorizations, labels);
//! - [`server`]: the gRPC service.

pub mod index;
pub mod model;
pub mod proto;
pub mod rate_limit;
pub mod route;
pub mod server;
pub use index::{PolicyConfig, SharedPolicyIndex};
