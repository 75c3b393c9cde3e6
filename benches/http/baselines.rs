//! The baseline pairs of the HTTP bench: haproxy in HTTP mode and nginx, each one
//! thread (process), chained like the weft pair and keeping upstream connections alive.

use std::{fs, net::SocketAddr, path::Path, process::Command};

use crate::{
    http_load::Proto,
    procs::{self, Pair, Proc},
};

/// haproxy in HTTP mode, one thread, reusing upstream connections across client
/// connections (`http-reuse always`); with `Proto::H2`, HTTP/2 (h2c) on both sides.
pub fn haproxy_config(proto: Proto) -> impl Fn(SocketAddr, SocketAddr) -> String {
    let h2 = if proto == Proto::H2 { " proto h2" } else { "" };
    move |listen, to| haproxy_http(listen, h2, to, h2)
}

/// haproxy in HTTP mode as `haproxy_config` has it, with `bind` and `server` options (TLS,
/// ALPN, protocol) after the addresses.
pub fn haproxy_http(listen: SocketAddr, bind: &str, to: SocketAddr, server: &str) -> String {
    format!(
        "global\n  nbthread 1\n  maxconn 4000\n\ndefaults\n  mode http\n  option http-keep-alive\n  \
         http-reuse always\n  timeout connect 1s\n  timeout client 300s\n  timeout server 300s\n  \
         timeout http-keep-alive 300s\n\nfrontend fe\n  bind {listen}{bind}\n  default_backend be\n\n\
         backend be\n  server upstream {to}{server}\n"
    )
}

pub fn nginx_installed() -> bool {
    procs::installed(NGINX, "-v")
}

const NGINX: &str = "/usr/sbin/nginx";

/// An nginx pair: one process each (`master_process off`, so the process measured is the
/// one serving), keep-alive to clients and to a keep-alive upstream. nginx proxies only
/// HTTP/1.1 to its upstream, so with `Proto::H2` only A's clients speak HTTP/2 (prior
/// knowledge, `listen ... http2`); A → B → backend is HTTP/1.1 keep-alive.
pub fn nginx_pair(
    backend: SocketAddr,
    dir: &Path,
    tag: &str,
    front: Proto,
) -> anyhow::Result<Pair> {
    procs::listening_pair(backend, |name, listen, to| {
        let stem = format!("{}-{name}", tag.replace(' ', "-"));
        let conf = dir.join(format!("{stem}.conf"));
        let h2 = front == Proto::H2 && name == "A";
        fs::write(&conf, nginx_config(listen, h2, to, &dir.join(&stem)))?;
        let mut cmd = Command::new(NGINX);
        cmd.arg("-e").arg("stderr").arg("-c").arg(&conf).args(["-g", "daemon off;"]);
        Proc::spawn(&mut cmd, format!("{tag} {name}"), dir)
    })
}

fn nginx_config(listen: SocketAddr, h2: bool, to: SocketAddr, stem: &Path) -> String {
    let s = stem.display();
    let http2 = if h2 { " http2" } else { "" };
    // keepalive_requests: nginx closes a keep-alive connection after 1 000 requests by
    // default, which would make it reconnect every half second at 2 000 req/s.
    format!(
        "master_process off;\nworker_processes 1;\nerror_log stderr warn;\npid {s}.pid;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {s}-body;\n  proxy_temp_path {s}-proxy;\n  \
         fastcgi_temp_path {s}-fastcgi;\n  uwsgi_temp_path {s}-uwsgi;\n  scgi_temp_path {s}-scgi;\n  \
         keepalive_timeout 300s;\n  keepalive_requests 1000000000;\n  \
         upstream up {{ server {to}; keepalive 64; keepalive_requests 1000000000; keepalive_timeout 300s; }}\n  \
         server {{\n    listen {listen}{http2};\n    location / {{\n      proxy_pass http://up;\n      \
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    )
}
