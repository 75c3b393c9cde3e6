//! YAML output that every reader takes back as the value written. kubectl and the API
//! server read YAML 1.1 (Go's yaml.v2 under sigs.k8s.io/yaml), where `on`, `no`, `y`, `~`,
//! `0x10`, `012`, `1_000`, `1:20` or `2001-12-14` are not strings, and serde_yaml_ng
//! (YAML 1.2) writes most of them plain: `value: on` became `true`, and the API server
//! refused the Deployment. So the injector writes its own: block style as serde_yaml_ng, plain
//! scalars only for strings no YAML 1.1 or 1.2 reader takes for anything else, every other
//! string double-quoted with escapes, and multi-line strings as literal blocks when they
//! read back exactly.

use serde_json::{Map, Value};

/// `v` as a YAML document, ending with a line break.
pub fn to_string(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => map(&mut out, m, 0, false),
        Value::Array(a) if !a.is_empty() => seq(&mut out, a, 0, false),
        _ => {
            scalar(&mut out, v, 2);
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// A block mapping at `n` spaces; with `inline`, its first key continues the current line
/// (after `- `).
fn map(out: &mut String, m: &Map<String, Value>, n: usize, inline: bool) {
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 || !inline {
            indent(out, n);
        }
        let mut key = String::new();
        if is_plain(k) {
            key.push_str(k)
        } else {
            quoted(&mut key, k)
        }
        // A key longer than 1024 characters must be explicit (`? key`): readers look no
        // further for the `:` of an implicit one.
        let explicit = key.len() > 1000;
        if explicit {
            out.push_str("? ");
        }
        out.push_str(&key);
        if explicit {
            out.push('\n');
            indent(out, n);
        }
        out.push(':');
        match v {
            Value::Object(m) if !m.is_empty() => {
                out.push('\n');
                map(out, m, n + 2, false);
            }
            // Items at the key's own indentation, as kubectl and serde_yaml_ng write them.
            Value::Array(a) if !a.is_empty() => {
                out.push('\n');
                seq(out, a, n, false);
            }
            _ => {
                out.push(' ');
                scalar(out, v, n + 2);
                out.push('\n');
            }
        }
    }
}

/// A block sequence at `n` spaces; with `inline`, its first item continues the current line.
fn seq(out: &mut String, a: &[Value], n: usize, inline: bool) {
    for (i, v) in a.iter().enumerate() {
        if i > 0 || !inline {
            indent(out, n);
        }
        out.push_str("- ");
        match v {
            Value::Object(m) if !m.is_empty() => map(out, m, n + 2, true),
            Value::Array(a) if !a.is_empty() => seq(out, a, n + 2, true),
            _ => {
                scalar(out, v, n + 2);
                out.push('\n');
            }
        }
    }
}

/// A scalar or an empty collection, on the current line; a literal block's lines are
/// indented by `n` spaces.
fn scalar(out: &mut String, v: &Value, n: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(num) => number(out, &num.to_string()),
        Value::String(s) if is_plain(s) => out.push_str(s),
        Value::String(s) if is_literal(s) => literal(out, s, n),
        Value::String(s) => quoted(out, s),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

/// serde_json writes `1e20`, which YAML 1.1 reads as a string (it wants a `.` and a signed
/// exponent): `1.0e+20` is a float to every reader.
fn number(out: &mut String, text: &str) {
    match text.split_once('e') {
        Some((mantissa, exp)) => {
            out.push_str(mantissa);
            if !mantissa.contains('.') {
                out.push_str(".0");
            }
            out.push('e');
            if !exp.starts_with(['-', '+']) {
                out.push('+');
            }
            out.push_str(exp);
        }
        None => out.push_str(text),
    }
}

/// Whether `s` can be written plain: made of unremarkable characters, starting with none
/// that means something in YAML, and not one of the words or numbers a YAML 1.1 or 1.2
/// reader resolves to null, a boolean, a number or a timestamp. Conservative: a string is
/// quoted whenever it might be read otherwise.
fn is_plain(s: &str) -> bool {
    let Some(first) = s.chars().next() else { return false };
    // Flow indicators (`,[]`) are plain in block style, which is all this writes.
    let ordinary = |c: char| c.is_alphanumeric() || "-_./:@+=,%()$[]".contains(c);
    let first_ok = first.is_alphanumeric()
        // `-` alone, or before a space, starts a sequence item; `--flag` is plain.
        || (first == '-' && s.len() > 1 && !s.starts_with("- ") && !s.starts_with("---"))
        || "/_$(+".contains(first)
        || (first == '.' && !s.starts_with("..."));
    first_ok
        && s.chars().all(|c| ordinary(c) || c == ' ')
        // Spaces only single and inside; no `: ` (a key) nor trailing `:`.
        && !s.ends_with([' ', ':'])
        && !s.contains("  ")
        && !s.contains(": ")
        && !is_special_word(s)
        && !is_number_like(s)
}

/// The null and boolean words of YAML 1.1 (yaml.v2 reads `y`, `n`, `on`, `off`), in any case.
fn is_special_word(s: &str) -> bool {
    const WORDS: [&str; 10] = ["~", "null", "true", "false", "yes", "no", "y", "n", "on", "off"];
    WORDS.iter().any(|w| w.eq_ignore_ascii_case(s))
}

/// Anything that may read as an int (`012`, `0x1F`, `0o7`, `0b1`, `1_000`, `1:20`), a
/// float (`1e3`, `.5`, `1.`, `.inf`, `.NaN`) or a timestamp (`2001-12-14 21:59:43.10 -5`):
/// after an optional sign, a digit or a `.`, and only characters those are made of.
fn is_number_like(s: &str) -> bool {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    body.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && body.chars().all(|c| c.is_ascii_hexdigit() || "_.:+- xXoOiInNtTzZ".contains(c))
}

/// Whether `s` reads back exactly from a literal block (`|`): several lines, each starting
/// and ending with no space (the first's would be read as indentation, a last one's is
/// invisible), and only printable characters with `\n` the only line break.
fn is_literal(s: &str) -> bool {
    s.contains('\n')
        && !s.starts_with(['\n', ' '])
        && s.chars().all(|c| c == '\n' || (printable(c) && c != '\t' && c != '\r'))
        && s.split('\n').all(|line| !line.ends_with(' '))
}

/// `|` keeps one final line break, `|-` none, `|+` all of them (as empty lines). The
/// caller ends the last line.
fn literal(out: &mut String, s: &str, n: usize) {
    let body = s.trim_end_matches('\n');
    let breaks = s.len() - body.len();
    out.push_str(match breaks {
        0 => "|-",
        1 => "|",
        _ => "|+",
    });
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            indent(out, n);
            out.push_str(line);
        }
    }
    for _ in 1..breaks {
        out.push('\n');
    }
}

/// A double-quoted scalar: JSON's escapes, which YAML's are a superset of, and every
/// character a reader would not take as it is (controls, the Unicode line breaks
/// YAML 1.1 folds, the byte-order mark) as `\u`/`\U`.
fn quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if printable(c) => out.push(c),
            c if u32::from(c) <= 0xFFFF => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push_str(&format!("\\U{:08X}", u32::from(c))),
        }
    }
    out.push('"');
}

/// YAML's printable characters, less the line breaks of YAML 1.1 (NEL, LS, PS) and the
/// byte-order mark, which readers treat specially.
fn printable(c: char) -> bool {
    matches!(c, ' '..='~' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
        && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{FEFF}')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Strings YAML 1.1 (kubectl, the API server) or 1.2 reads as something else: the
    /// audit's list and more of each kind.
    const NOT_STRINGS_IN_YAML_1_1: &[&str] = &[
        "on",
        "off",
        "On",
        "OFF",
        "yes",
        "no",
        "Yes",
        "NO",
        "y",
        "n",
        "Y",
        "N",
        "true",
        "false",
        "True",
        "FALSE",
        "~",
        "null",
        "Null",
        "NULL",
        "1_000",
        "0x10",
        "0X1f",
        "-0x10",
        "1e3",
        "1E3",
        "1e+3",
        "-1e-3",
        ".inf",
        "-.inf",
        "+.INF",
        ".nan",
        ".NaN",
        "0o7",
        "012",
        "0b101",
        "1:20",
        "190:20:30.15",
        "-1:20",
        "1",
        "-1",
        "+1",
        "0",
        "1.5",
        "1.",
        ".5",
        "1.2.3",
        "2001-12-14",
        "2001-12-14t21:59:43.10-05:00",
        "2001-12-14 21:59:43.10 -5",
        "<<",
        "=",
        "",
    ];

    fn doc(s: &str) -> Value {
        json!({"env": [{"name": "X", "value": s}], "annotations": {s: s}})
    }

    /// The audit: `value: on` was written plain, read by kubectl as `true`, and refused.
    #[test]
    fn strings_yaml_1_1_reads_otherwise_are_quoted() {
        for s in NOT_STRINGS_IN_YAML_1_1 {
            let v = doc(s);
            let out = to_string(&v);
            assert!(out.contains(&format!("value: \"{s}\"\n")), "{s:?}:\n{out}");
            assert!(out.contains(&format!("  \"{s}\": \"{s}\"\n")), "{s:?}:\n{out}");
            let back: Value = serde_yaml_ng::from_str(&out).unwrap();
            assert_eq!(back, v, "{s:?}:\n{out}");
        }
    }

    #[test]
    fn ordinary_strings_stay_plain() {
        for s in [
            "nginx",
            "--inbound-port",
            "-x",
            "100m",
            "64Mi",
            "500ms",
            "10.0.0.0/8,fd00::/8",
            "0.0.0.0:4143,[::]:4143",
            "ghcr.io/weft-mesh/weft-proxy:v1",
            "$(WEFT_POD_NS):$(WEFT_POD_NAME)",
            "web.prod.serviceaccount.identity.weft.cluster.local",
            "weft.dev/inject",
            "hello world",
            "http://x:80/y",
            "Ünïcödé",
            ".hidden",
            "yesterday",
            "online",
            "nobody",
        ] {
            let out = to_string(&json!({"k": s}));
            assert_eq!(out, format!("k: {s}\n"));
            assert_eq!(serde_yaml_ng::from_str::<Value>(&out).unwrap(), json!({"k": s}));
        }
    }

    #[test]
    fn what_cannot_be_plain_is_quoted_and_reads_back() {
        for s in [
            "- item",
            "-",
            "---",
            "...",
            "a: b",
            "a:",
            "#x",
            "a #b",
            " lead",
            "trail ",
            "two  spaces",
            "tab\tx",
            "!tag",
            "&anchor",
            "*alias",
            "?",
            "|",
            ">",
            "%x",
            "@x",
            "`x",
            "'q'",
            "\"q\"",
            "{a}",
            "[a]",
            "back\\slash",
            "nul\0",
            "bell\u{7}",
            "del\u{7F}",
            "nel\u{85}",
            "ls\u{2028}",
            "ps\u{2029}",
            "bom\u{FEFF}",
            "nbsp\u{A0}",
            "cr\r",
            "emoji 🦀",
        ] {
            let v = json!({s: [s]});
            let out = to_string(&v);
            assert!(out.starts_with('"') && out.contains("- \""), "{s:?}:\n{out}");
            assert_eq!(serde_yaml_ng::from_str::<Value>(&out).unwrap(), v, "{s:?}:\n{out}");
        }
    }

    #[test]
    fn multi_line_strings_read_back_exactly() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let out = to_string(&json!({"a": {"pem": pem}}));
        assert_eq!(
            out,
            "a:\n  pem: |\n    -----BEGIN CERTIFICATE-----\n    MIIB\n    -----END CERTIFICATE-----\n"
        );
        for s in [
            "a\nb",
            "a\nb\n",
            "a\nb\n\n",
            "a\n\n\nb\n\n\n",
            "a\n  indented\nb",
            "a\n#not a comment\n---\n...\n- x\nk: v",
            "\nleading",
            "\n",
            "\n\n",
            " lead\nx",
            "trail \nx",
            "x\n \ny",
            "tab\tx\ny",
            "crlf\r\nx",
            "nel\u{85}x\ny",
            "ls\u{2028}x\ny",
            "a\n\"quoted\"\n'single'\n",
        ] {
            for v in [json!({"k": s}), json!({"k": [s, {"k": s}]}), json!([[s]]), json!(s)] {
                let out = to_string(&v);
                let back: Value =
                    serde_yaml_ng::from_str(&out).unwrap_or_else(|e| panic!("{s:?}: {e}:\n{out}"));
                assert_eq!(back, v, "{s:?}:\n{out}");
            }
        }
    }

    #[test]
    fn the_layout_is_block_style_as_kubectl_writes_it() {
        let v = json!({
            "kind": "Deployment",
            "spec": {"containers": [{"name": "app", "args": ["a", "4143"], "ports": []}]},
            "empty": {},
            "list": [[1, 2], [], {}],
            "n": null, "t": true, "i": -3, "f": 0.5, "big": 1e20, "small": 1.5e-7,
        });
        let out = to_string(&v);
        // The key `n` too is false in YAML 1.1.
        assert_eq!(
            out,
            "kind: Deployment\nspec:\n  containers:\n  - name: app\n    args:\n    - a\n    - \"4143\"\n    ports: []\nempty: {}\nlist:\n- - 1\n  - 2\n- []\n- {}\n\"n\": null\nt: true\ni: -3\nf: 0.5\nbig: 1.0e+20\nsmall: 1.5e-7\n"
        );
        assert_eq!(serde_yaml_ng::from_str::<Value>(&out).unwrap(), v);
    }

    #[test]
    fn keys_too_long_for_an_implicit_key_are_explicit() {
        let long = "k".repeat(2000);
        for v in [
            json!({&long: "v", "next": 1}),
            json!({&long: {"a": 1}, "next": 1}),
            json!({&long: ["a"], "next": 1}),
            json!([{&long: "\n".repeat(3)}]),
        ] {
            let out = to_string(&v);
            assert!(out.contains("? "), "{out}");
            assert_eq!(serde_yaml_ng::from_str::<Value>(&out).unwrap(), v, "{out}");
        }
    }
}
