//! End-to-end tests: the real binaries, real sockets, real clients, and (as root) real
//! iptables rules in network namespaces. One test binary to keep link time down.

mod access_log;
mod admin;
mod chart;
mod check;
mod control_plane;
mod demo;
mod destination;
mod discovery;
mod http;
mod identity;
mod init;
mod injector;
mod interception;
mod kubeapi;
mod loopback;
mod mtls;
mod netns;
mod outbound_routes;
mod policy;
mod policy_api;
mod policy_detect;
mod policy_grpc_filters;
mod policy_grpc_routes;
mod policy_http_filters;
mod policy_rate_limit;
mod policy_routes;
#[path = "../../benches/common/ports.rs"]
mod ports;
mod proxy_identity;
mod route_status;
mod split;
mod support;
