//! Protocol detection: decides from a connection's first bytes whether it carries a TLS
//! ClientHello (and for which SNI), an HTTP/2 prior-knowledge preface, an HTTP/1 request
//! line, or something else (opaque TCP). Pure and allocation-free except for the SNI.

/// What a connection's first bytes say it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// A TLS ClientHello; the server name when it carries one we could parse.
    Tls { sni: Option<String> },
    /// The HTTP/2 connection preface (prior knowledge).
    Http2,
    /// An HTTP/1.x request line.
    Http1,
    /// None of the above: forwarded as bytes.
    Opaque,
}

impl Protocol {
    /// The value of the `protocol` metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Protocol::Tls { .. } => "tls",
            Protocol::Http2 => "h2",
            Protocol::Http1 => "http/1",
            Protocol::Opaque => "opaque",
        }
    }
}

/// The outcome of looking at a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detect {
    Found(Protocol),
    /// The prefix is consistent with a known protocol but too short to tell.
    NeedMore,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Methods worth waiting for when the first bytes hold no space yet (RFC 9110 and
/// WebDAV's common ones). Once the method's space has come, any token will do (below); but
/// waiting on every token-looking prefix would stall a text protocol whose client sends a
/// word and waits for the answer (`ping`) until the detection timeout.
const METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"REPORT",
    b"SEARCH",
    b"PURGE",
    b"QUERY",
];

/// Longest method taken: real ones are short (`PROPPATCH`), and a long run of token bytes
/// is more likely some other text protocol.
const MAX_METHOD: usize = 32;

/// A byte of an HTTP token (RFC 9110 §5.6.2): what a method is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Longest HTTP/1 request line we wait for before calling the stream opaque.
const MAX_REQUEST_LINE: usize = 8192;

/// Detects the protocol from `buf`, the bytes received so far. `buf.len() >= max`
/// means no more bytes will come for detection, so `NeedMore` is never returned then.
pub fn detect(buf: &[u8], max: usize) -> Detect {
    if buf.is_empty() {
        return Detect::NeedMore;
    }
    let mut undecided = false;
    for candidate in [tls(buf), h2(buf), http1(buf)] {
        match candidate {
            Detect::Found(Protocol::Opaque) => {}
            found @ Detect::Found(_) => return found,
            Detect::NeedMore => undecided = true,
        }
    }
    if !undecided {
        Detect::Found(Protocol::Opaque)
    } else if buf.len() < max {
        Detect::NeedMore
    } else if tls(buf) == Detect::NeedMore {
        // A ClientHello bigger than the buffer: still TLS, SNI unknown.
        Detect::Found(Protocol::Tls { sni: None })
    } else {
        Detect::Found(Protocol::Opaque)
    }
}

/// The protocol once a read has left `buf`: `None` while more bytes (up to `max`) could
/// still decide; at EOF (`eof`: the client is done sending) what it sent decides, and what
/// nothing decided is opaque.
pub fn after_read(buf: &[u8], max: usize, eof: bool) -> Option<Protocol> {
    match detect(buf, if eof { buf.len() } else { max }) {
        Detect::Found(p) => Some(p),
        Detect::NeedMore if eof => Some(Protocol::Opaque),
        Detect::NeedMore => None,
    }
}

/// Each detector answers Found(its protocol), NeedMore, or this when the bytes rule it out.
fn ruled_out() -> Detect {
    Detect::Found(Protocol::Opaque)
}

fn h2(buf: &[u8]) -> Detect {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] != H2_PREFACE[..n] {
        ruled_out()
    } else if n == H2_PREFACE.len() {
        Detect::Found(Protocol::Http2)
    } else {
        Detect::NeedMore
    }
}

fn http1(buf: &[u8]) -> Detect {
    // request-line = method SP request-target SP HTTP-version CRLF
    let Some(sp) = buf.iter().position(|&b| b == b' ') else {
        return if METHODS.iter().any(|m| m.starts_with(buf)) {
            Detect::NeedMore
        } else {
            ruled_out()
        };
    };
    // Any token is a method (RFC 9110 §9.1): a client using one we do not know (`get`,
    // `M-SEARCH`) still gets HTTP — its headers checked, the client identity header
    // stripped — not a tunnel. What decides is the whole line, ending in the HTTP/1 version.
    let method = &buf[..sp];
    if method.is_empty() || method.len() > MAX_METHOD || !method.iter().all(|&b| is_tchar(b)) {
        return ruled_out();
    }
    let rest = &buf[sp + 1..];
    let line_end = rest.iter().position(|&b| b == b'\n');
    let line = match line_end {
        Some(i) => &rest[..i],
        None if buf.len() >= MAX_REQUEST_LINE => return ruled_out(),
        None => {
            // Bytes of a request target are visible ASCII; anything else is not HTTP.
            return if rest.iter().all(|&b| b.is_ascii_graphic() || b == b' ' || b == b'\r') {
                Detect::NeedMore
            } else {
                ruled_out()
            };
        }
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line.iter().rposition(|&b| b == b' ') {
        Some(i)
            if i > 0
                && line[..i].iter().all(u8::is_ascii_graphic)
                && matches!(&line[i + 1..], b"HTTP/1.1" | b"HTTP/1.0") =>
        {
            Detect::Found(Protocol::Http1)
        }
        _ => ruled_out(),
    }
}

/// Whether `buf` is the start of a TLS ClientHello, not yet whole.
pub fn is_tls_prefix(buf: &[u8]) -> bool {
    !buf.is_empty() && tls(buf) == Detect::NeedMore
}

fn tls(buf: &[u8]) -> Detect {
    // TLSPlaintext: type(22 = handshake) version(3,x) length(2) then the Handshake:
    // type(1 = client_hello) length(3) ...
    const HEADER: usize = 5;
    if buf[0] != 22 {
        return ruled_out();
    }
    if buf.len() >= 2 && buf[1] != 3 {
        return ruled_out();
    }
    if buf.len() >= 3 && buf[2] > 4 {
        return ruled_out();
    }
    if buf.len() >= 6 && buf[5] != 1 {
        return ruled_out();
    }
    if buf.len() < HEADER + 4 {
        return Detect::NeedMore;
    }
    let record_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if !(4..=16384 + 2048).contains(&record_len) {
        return ruled_out();
    }
    let body_end = HEADER + record_len;
    if buf.len() < body_end {
        return Detect::NeedMore;
    }
    // Well-formed record header and handshake type: it is TLS even when the SNI
    // cannot be parsed (a truncated or exotic hello).
    let sni = client_hello_sni(&buf[HEADER..body_end]);
    Detect::Found(Protocol::Tls { sni })
}

/// Reads the server_name extension's host_name from a Handshake message holding a ClientHello.
fn client_hello_sni(hs: &[u8]) -> Option<String> {
    let mut r = Reader(hs);
    if r.u8()? != 1 {
        return None;
    }
    let len = r.u24()?;
    let mut r = Reader(r.take(len)?);
    r.take(2 + 32)?; // legacy_version, random
    let sid = usize::from(r.u8()?);
    r.take(sid)?;
    let suites = usize::from(r.u16()?);
    r.take(suites)?;
    let comp = usize::from(r.u8()?);
    r.take(comp)?;
    let ext_len = usize::from(r.u16()?);
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let len = usize::from(exts.u16()?);
        let body = exts.take(len)?;
        if ty != 0 {
            continue;
        }
        let mut list = Reader(body);
        let list_len = usize::from(list.u16()?);
        let mut list = Reader(list.take(list_len)?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name_len = usize::from(list.u16()?);
            let name = list.take(name_len)?;
            if name_type == 0 {
                let valid = !name.is_empty()
                    && name
                        .iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
                return valid.then(|| String::from_utf8_lossy(name).to_ascii_lowercase());
            }
        }
        return None;
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        let b = self.take(3)?;
        Some(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 8192;

    /// A minimal, well-formed ClientHello record carrying `sni`.
    fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let name = name.as_bytes();
            let mut list = vec![0u8];
            list.extend((name.len() as u16).to_be_bytes());
            list.extend(name);
            let mut ext = (list.len() as u16).to_be_bytes().to_vec();
            ext.extend(list);
            exts.extend(0u16.to_be_bytes());
            exts.extend((ext.len() as u16).to_be_bytes());
            exts.extend(ext);
        }
        // supported_versions (43): TLS 1.3
        exts.extend([0, 43, 0, 3, 2, 3, 4]);
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one suite
        body.extend([1, 0]); // null compression
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut hs = vec![1];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![22, 3, 1];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    fn found(p: Protocol) -> Detect {
        Detect::Found(p)
    }

    #[test]
    fn tls_prefixes_are_known_as_such() {
        let hello = client_hello(Some("web.prod.svc.cluster.local"));
        for n in 1..hello.len() {
            assert!(is_tls_prefix(&hello[..n]), "{n}");
        }
        assert!(!is_tls_prefix(&hello), "whole: detected, not a prefix");
        assert!(!is_tls_prefix(b""));
        assert!(!is_tls_prefix(b"GET /"));
    }

    #[test]
    fn tls_with_and_without_sni() {
        let hello = client_hello(Some("Web.Prod.svc.cluster.local"));
        assert_eq!(
            detect(&hello, MAX),
            found(Protocol::Tls { sni: Some("web.prod.svc.cluster.local".into()) })
        );
        assert_eq!(detect(&client_hello(None), MAX), found(Protocol::Tls { sni: None }));
    }

    #[test]
    fn tls_prefixes_need_more_at_every_length() {
        let hello = client_hello(Some("a.example"));
        for n in 1..hello.len() {
            assert_eq!(detect(&hello[..n], MAX), Detect::NeedMore, "prefix of {n} bytes");
        }
    }

    #[test]
    fn tls_hello_larger_than_the_buffer_is_tls_without_sni() {
        let hello = client_hello(Some("a.example"));
        assert_eq!(detect(&hello[..20], 20), found(Protocol::Tls { sni: None }));
    }

    #[test]
    fn malformed_sni_is_tls_without_a_name() {
        let mut hello = client_hello(Some("bad name"));
        assert_eq!(detect(&hello, MAX), found(Protocol::Tls { sni: None }));
        // Corrupt an inner length: still a TLS record, no SNI.
        hello[9] = 0xff;
        assert_eq!(detect(&hello, MAX), found(Protocol::Tls { sni: None }));
    }

    #[test]
    fn not_tls() {
        for bytes in [&[22u8, 2][..], &[22, 3, 9], &[22, 3, 1, 0, 10, 2], &[23, 3, 3, 0, 5]] {
            assert_eq!(detect(bytes, MAX), found(Protocol::Opaque), "{bytes:?}");
        }
        assert_eq!(detect(&[22, 3, 1, 0, 0, 1, 0, 0, 0], MAX), found(Protocol::Opaque));
    }

    #[test]
    fn h2_preface() {
        assert_eq!(detect(H2_PREFACE, MAX), found(Protocol::Http2));
        let mut more = H2_PREFACE.to_vec();
        more.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(detect(&more, MAX), found(Protocol::Http2));
        // `PRI * HTTP/2.0` is also a syntactically valid HTTP/1-like line prefix;
        // only the full preface decides.
        for n in 1..H2_PREFACE.len() {
            assert_eq!(detect(&H2_PREFACE[..n], MAX), Detect::NeedMore, "{n}");
        }
    }

    #[test]
    fn http1_request_lines() {
        for line in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"POST /x?y=1 HTTP/1.0\r\n",
            b"GET http://a.example/ HTTP/1.1\n",
            b"CONNECT a.example:443 HTTP/1.1\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            // Methods are tokens, known or not, in any case.
            b"QUERY /search HTTP/1.1\r\n",
            b"get / HTTP/1.1\r\n",
            b"M-SEARCH * HTTP/1.1\r\n",
        ] {
            assert_eq!(detect(line, MAX), found(Protocol::Http1), "{line:?}");
        }
        let line = b"DELETE /items/1 HTTP/1.1\r\n";
        for n in 1..line.len() - 1 {
            assert_eq!(detect(&line[..n], MAX), Detect::NeedMore, "{n}");
        }
    }

    #[test]
    fn not_http1() {
        for bytes in [
            &b"GET / HTTP/2.0\r\n"[..],
            b"GET / SPDY/3\r\n",
            b"GET\r\n",
            b"GE(T / HTTP/1.1\r\n",
            b" GET / HTTP/1.1\r\n",
            b"GET  /a HTTP/1.1\r\n",
            b"get key\r\n", // memcached
            b"ping",        // a word, then waiting for the answer: no stall
            b"GET /\x00 HTTP/1.1\r\n",
            b"GET  HTTP/1.1\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f", // postgres SSLRequest
            b"*1\r\n$4\r\nPING\r\n",             // redis
        ] {
            assert_eq!(detect(bytes, MAX), found(Protocol::Opaque), "{bytes:?}");
        }
    }

    #[test]
    fn a_full_buffer_without_a_match_is_opaque() {
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', 100));
        assert_eq!(detect(&long, MAX), Detect::NeedMore);
        assert_eq!(detect(&long, long.len()), found(Protocol::Opaque));
        let mut huge = b"GET /".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_REQUEST_LINE));
        assert_eq!(detect(&huge, usize::MAX), found(Protocol::Opaque));
    }

    #[test]
    fn empty_needs_more() {
        assert_eq!(detect(b"", MAX), Detect::NeedMore);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_full_buffers_always_decide() {
        // A cheap deterministic fuzz: xorshift bytes, every prefix, small and full buffers.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut buf = Vec::new();
            let len = (x % 64) as usize + 1;
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            // Bias some toward known prefixes so the inner parsers are exercised.
            match x % 4 {
                0 => buf.splice(0..0, [22, 3, 1]).for_each(drop),
                1 => buf.splice(0..0, *b"GET ").for_each(drop),
                _ => {}
            }
            for n in 1..=buf.len() {
                let _ = detect(&buf[..n], MAX);
                assert_ne!(detect(&buf[..n], n), Detect::NeedMore);
            }
        }
    }
}
