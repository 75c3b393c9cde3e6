//! `helm template` without helm: the chart's templates rendered by a Go text/template
//! implementation (the `gtmpl` crate, a port of Go's `text/template`: actions, pipelines,
//! `define`/`template`, whitespace trimming, `if`/`range`/`with`, Go's builtins), plus the
//! Helm and sprig functions the chart may use, written here after their Go sources:
//! `include`, `required`, `default`, `quote`, `toYaml`, `fromYaml`, `indent`, `nindent`,
//! `trim`, `b64enc`, `int`, `sha256sum`, `list`, `dig`, `lookup`, `genCA`, `genSignedCert`
//! (in `certs`). A template that calls anything else fails to parse, so the chart cannot
//! drift outside what this renders faithfully.
//!
//! What it renders like helm: `.Values` (values.yaml deep-merged with the test's values, as
//! `--set-file` would), `.Release`, `.Chart` (from Chart.yaml), `.Template`; missing values
//! print as nothing (helm replaces `<no value>`); `_*.tpl` files only define templates;
//! `NOTES.txt` is rendered apart; `lookup` sees the objects the test says the cluster holds
//! (none: `helm template`, or a first install). Where gtmpl differs from Go: `range` over a
//! map follows the map's (unordered) iteration instead of sorted keys, which the chart never
//! does; there is no `=` assignment (Go 1.11), so the chart does without it; a whole number
//! is an integer here (gtmpl's values), where helm reads every number of a values file as
//! float64, which Go's `%v` prints as `1e+06` from a million on and `%d` not at all. So the
//! chart prints numbers that may be large through `int` (the connection caps); one printed
//! as it is would not be caught here.

use std::{cell::RefCell, collections::HashMap, path::Path};

use gtmpl::{Context, Func, FuncError, Template, Value};
use serde_json::Value as Json;

use super::certs;

/// The chart as helm reads it: its metadata, default values and template files.
pub struct Chart {
    meta: Json,
    values: Json,
    /// (helm's template name `<chart>/templates/<file>`, text), partials included.
    files: Vec<(String, String)>,
}

/// The release being rendered.
pub struct Release<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
}

/// A rendered chart: each manifest file's output, and the NOTES.
pub struct Rendered {
    pub files: Vec<(String, String)>,
    pub notes: String,
}

impl Chart {
    pub fn load(dir: &Path) -> Chart {
        let read = |p: &Path| {
            std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        };
        let yaml = |p: &Path| -> Json {
            serde_yaml_ng::from_str(&read(p))
                .unwrap_or_else(|e| panic!("{} is not YAML: {e}", p.display()))
        };
        let meta = yaml(&dir.join("Chart.yaml"));
        let values = yaml(&dir.join("values.yaml"));
        let name = meta["name"].as_str().expect("Chart.yaml name").to_owned();
        let mut files = Vec::new();
        let templates = dir.join("templates");
        for entry in std::fs::read_dir(&templates).expect("templates/") {
            let path = entry.expect("dir entry").path();
            let file = path.file_name().and_then(|f| f.to_str()).expect("utf-8 name").to_owned();
            assert!(path.is_file(), "templates/{file}: keep templates in one flat directory");
            files.push((format!("{name}/templates/{file}"), read(&path)));
        }
        files.sort();
        Chart { meta, values, files }
    }

    /// Renders every template with `values` merged over values.yaml, for a cluster that
    /// holds nothing yet; the first template error (a `required` value missing, say) is
    /// returned as helm would print it.
    pub fn render(&self, release: &Release<'_>, values: &Json) -> Result<Rendered, String> {
        self.render_in(release, values, &[])
    }

    /// `render` for an upgrade: `lookup` finds `cluster`'s objects (as the API server
    /// returns them: Secret data in base64).
    pub fn render_in(
        &self,
        release: &Release<'_>,
        values: &Json,
        cluster: &[Json],
    ) -> Result<Rendered, String> {
        let mut merged = self.values.clone();
        merge(&mut merged, values);
        let chart = &self.meta;
        let name = chart["name"].as_str().unwrap_or_default();
        let top = |template: &str| -> Value {
            map([
                ("Values", to_gtmpl(&merged)),
                (
                    "Release",
                    map([
                        ("Name", release.name.into()),
                        ("Namespace", release.namespace.into()),
                        ("Service", "Helm".into()),
                        ("IsInstall", true.into()),
                        ("IsUpgrade", false.into()),
                        ("Revision", 1.into()),
                    ]),
                ),
                (
                    "Chart",
                    map([
                        ("Name", to_gtmpl(&chart["name"])),
                        ("Version", to_gtmpl(&chart["version"])),
                        ("AppVersion", to_gtmpl(&chart["appVersion"])),
                        ("Description", to_gtmpl(&chart["description"])),
                        ("Type", to_gtmpl(&chart["type"])),
                        ("KubeVersion", to_gtmpl(&chart["kubeVersion"])),
                    ]),
                ),
                (
                    "Template",
                    map([
                        ("Name", template.into()),
                        ("BasePath", format!("{name}/templates").into()),
                    ]),
                ),
            ])
        };
        SOURCES.with(|s| *s.borrow_mut() = self.files.clone());
        CLUSTER.with(|c| *c.borrow_mut() = cluster.to_vec());
        let helpers: Vec<_> = self.files.iter().filter(|(n, _)| is_partial(n)).collect();
        let mut out = Rendered { files: Vec::new(), notes: String::new() };
        for (file, text) in self.files.iter().filter(|(n, _)| !is_partial(n)) {
            let mut t = Template::with_name(file.clone());
            t.add_funcs(FUNCS);
            for (h, htext) in &helpers {
                t.add_template(h.clone(), htext.clone()).map_err(|e| format!("{h}: {e}"))?;
            }
            t.parse(text.clone()).map_err(|e| format!("{file}: {e}"))?;
            let rendered = t
                .render(&Context::from(top(file)))
                .map_err(|e| format!("execution error at ({file}): {e}"))?
                .replace("<no value>", "");
            if file.ends_with("/NOTES.txt") {
                out.notes = rendered;
            } else {
                out.files.push((file.clone(), rendered));
            }
        }
        Ok(out)
    }
}

impl Rendered {
    /// The manifests as helm sends them: every file split at `---` lines, empty documents
    /// dropped; each parsed as YAML (panics on a document that is not).
    pub fn documents(&self) -> Vec<(String, Json)> {
        let mut docs = Vec::new();
        for (file, text) in &self.files {
            let mut current = String::new();
            let mut flush = |current: &mut String| {
                let is_empty =
                    current.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
                if !is_empty {
                    let v: Json = serde_yaml_ng::from_str(current).unwrap_or_else(|e| {
                        panic!("{file} renders a document that is not YAML ({e}):\n{current}")
                    });
                    docs.push((file.clone(), v));
                }
                current.clear();
            };
            for line in text.lines() {
                if line.trim_end() == "---" {
                    flush(&mut current);
                } else {
                    current.push_str(line);
                    current.push('\n');
                }
            }
            flush(&mut current);
        }
        docs
    }
}

/// Standard base64 with padding, as Go's `base64.StdEncoding` (k8s-openapi's `ByteString`
/// serializes that way).
pub fn base64(bytes: &[u8]) -> String {
    match serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec())) {
        Ok(Json::String(s)) => s,
        other => panic!("ByteString serializes to a string, not {other:?}"),
    }
}

fn is_partial(name: &str) -> bool {
    name.rsplit('/').next().is_some_and(|f| f.starts_with('_'))
}

/// Helm's values merge: maps merge key by key, anything else is replaced.
fn merge(base: &mut Json, over: &Json) {
    match (base, over) {
        (Json::Object(b), Json::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn to_gtmpl(v: &Json) -> Value {
    match v {
        // Go prints a nil interface as `<no value>` (which helm removes); gtmpl prints its
        // Nil as "nil", and its NoValue as Go does.
        Json::Null => Value::NoValue,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Value::from(u),
            (_, Some(i), _) => Value::from(i),
            (_, _, f) => Value::from(f.unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(s.clone()),
        Json::Array(a) => Value::Array(a.iter().map(to_gtmpl).collect()),
        Json::Object(o) => {
            Value::Map(o.iter().map(|(k, v)| (k.clone(), to_gtmpl(v))).collect::<HashMap<_, _>>())
        }
    }
}

/// Back to JSON for `toYaml`, keys sorted as Go's encoder sorts them.
fn to_json(v: &Value) -> Result<Json, FuncError> {
    Ok(match v {
        Value::NoValue | Value::Nil => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::String(s) => Json::String(s.clone()),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Json::from(u),
            (_, Some(i), _) => Json::from(i),
            (_, _, Some(f)) => Json::from(f),
            _ => return Err(FuncError::Generic(format!("toYaml: bad number {n:?}"))),
        },
        Value::Array(a) => Json::Array(a.iter().map(to_json).collect::<Result<_, _>>()?),
        Value::Map(m) | Value::Object(m) => {
            let mut keys: Vec<_> = m.keys().collect();
            keys.sort();
            let mut out = serde_json::Map::new();
            for k in keys {
                out.insert(k.clone(), to_json(&m[k])?);
            }
            Json::Object(out)
        }
        Value::Function(_) => return Err(FuncError::Generic("toYaml: a function".into())),
    })
}

thread_local! {
    /// Every template file, for `include` (gtmpl's functions are plain `fn`s).
    static SOURCES: RefCell<Vec<(String, String)>> = const { RefCell::new(Vec::new()) };
    /// The objects `lookup` finds.
    static CLUSTER: RefCell<Vec<Json>> = const { RefCell::new(Vec::new()) };
}

static FUNCS: &[(&str, Func)] = &[
    ("include", include as Func),
    ("required", required as Func),
    ("default", default as Func),
    ("quote", quote as Func),
    ("toYaml", to_yaml as Func),
    ("indent", indent as Func),
    ("nindent", nindent as Func),
    ("trim", trim as Func),
    ("b64enc", b64enc as Func),
    ("int", int as Func),
    ("sha256sum", sha256sum as Func),
    ("list", list as Func),
    ("dig", dig as Func),
    ("lookup", lookup as Func),
    ("fromYaml", from_yaml as Func),
    ("genCA", certs::gen_ca as Func),
    ("genSignedCert", certs::gen_signed_cert as Func),
];

fn arg<'a>(name: &str, args: &'a [Value], i: usize) -> Result<&'a Value, FuncError> {
    args.get(i).ok_or_else(|| FuncError::ExactlyXArgs(name.into(), i + 1))
}

/// Go's `%v` of a value, which is how helm turns a value into text.
fn text(v: &Value) -> String {
    match v {
        Value::NoValue | Value::Nil => String::new(),
        v => v.to_string(),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::NoValue | Value::Nil => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(a) => a.is_empty(),
        Value::Map(m) | Value::Object(m) => m.is_empty(),
        Value::Function(_) => false,
    }
}

/// `include NAME DATA`: a named template's output, as a string to pipe on.
fn include(args: &[Value]) -> Result<Value, FuncError> {
    let Value::String(name) = arg("include", args, 0)? else {
        return Err(FuncError::Generic("include: the template name must be a string".into()));
    };
    let data = arg("include", args, 1)?.clone();
    let sources = SOURCES.with(|s| s.borrow().clone());
    let mut t = Template::with_name("include");
    t.add_funcs(FUNCS);
    for (file, text) in sources {
        t.add_template(file.clone(), text)
            .map_err(|e| FuncError::Generic(format!("{file}: {e}")))?;
    }
    t.parse(format!("{{{{template {name:?} .}}}}"))
        .map_err(|e| FuncError::Generic(e.to_string()))?;
    let out = t
        .render(&Context::from(data))
        .map_err(|e| FuncError::Generic(format!("include {name:?}: {e}")))?;
    Ok(Value::String(out.replace("<no value>", "")))
}

/// `required MESSAGE VALUE`: helm fails the render with MESSAGE when VALUE is nil or "".
fn required(args: &[Value]) -> Result<Value, FuncError> {
    let message = text(arg("required", args, 0)?);
    match args.get(1) {
        None | Some(Value::NoValue | Value::Nil) => Err(FuncError::Generic(message)),
        Some(Value::String(s)) if s.is_empty() => Err(FuncError::Generic(message)),
        Some(v) => Ok(v.clone()),
    }
}

/// `default DEFAULT VALUE`: VALUE unless it is empty (sprig's `empty`).
fn default(args: &[Value]) -> Result<Value, FuncError> {
    let fallback = arg("default", args, 0)?;
    match args.get(1) {
        Some(v) if !is_empty(v) => Ok(v.clone()),
        _ => Ok(fallback.clone()),
    }
}

/// `quote A B…`: each non-nil argument as Go's `%q` would write it, joined by spaces.
fn quote(args: &[Value]) -> Result<Value, FuncError> {
    let quoted: Vec<String> = args
        .iter()
        .filter(|v| !matches!(v, Value::NoValue | Value::Nil))
        .map(|v| go_quote(&text(v)))
        .collect();
    Ok(Value::String(quoted.join(" ")))
}

fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `toYaml VALUE`: helm's YAML of a value, without the final newline.
fn to_yaml(args: &[Value]) -> Result<Value, FuncError> {
    let json = to_json(arg("toYaml", args, 0)?)?;
    let yaml = serde_yaml_ng::to_string(&json).map_err(|e| FuncError::Generic(e.to_string()))?;
    Ok(Value::String(yaml.trim_end_matches('\n').to_owned()))
}

fn count(name: &str, v: &Value) -> Result<usize, FuncError> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| FuncError::Generic(format!("{name}: bad count {n:?}"))),
        v => Err(FuncError::Generic(format!("{name}: the count must be a number, not {v}"))),
    }
}

/// `indent N TEXT`: every line (empty ones too, as sprig does) padded by N spaces.
fn indent(args: &[Value]) -> Result<Value, FuncError> {
    let pad = " ".repeat(count("indent", arg("indent", args, 0)?)?);
    let s = text(arg("indent", args, 1)?);
    Ok(Value::String(format!("{pad}{}", s.replace('\n', &format!("\n{pad}")))))
}

/// `nindent N TEXT`: a newline, then `indent N TEXT`.
fn nindent(args: &[Value]) -> Result<Value, FuncError> {
    let Value::String(s) = indent(args)? else { unreachable!("indent returns a string") };
    Ok(Value::String(format!("\n{s}")))
}

fn trim(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(text(arg("trim", args, 0)?).trim().to_owned()))
}

fn b64enc(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(base64(text(arg("b64enc", args, 0)?).as_bytes())))
}

/// sprig's `int` (cast.ToInt): numbers truncated, numeric strings parsed, anything else 0.
fn int(args: &[Value]) -> Result<Value, FuncError> {
    let n = match arg("int", args, 0)? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)).unwrap_or(0),
        Value::String(s) => s.trim().parse().unwrap_or(0),
        Value::Bool(b) => i64::from(*b),
        _ => 0,
    };
    Ok(Value::from(n))
}

fn sha256sum(args: &[Value]) -> Result<Value, FuncError> {
    let s = text(arg("sha256sum", args, 0)?);
    let digest = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    Ok(Value::String(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()))
}

/// `list A B…`: the arguments as a list.
fn list(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::Array(args.to_vec()))
}

/// `dig K1 K2… DEFAULT DICT`: DICT[K1][K2]…, or DEFAULT where a key is missing (a key
/// present with a null value gives null, as sprig's does).
fn dig(args: &[Value]) -> Result<Value, FuncError> {
    let [keys @ .., fallback, dict] = args else {
        return Err(FuncError::AtLeastXArgs("dig".into(), 3));
    };
    if keys.is_empty() {
        return Err(FuncError::AtLeastXArgs("dig".into(), 3));
    }
    let mut at = dict;
    for key in keys {
        let (Value::Map(m) | Value::Object(m)) = at else {
            return Err(FuncError::Generic(format!("dig: {at} is not a dict")));
        };
        let Value::String(key) = key else {
            return Err(FuncError::Generic(format!("dig: the key {key} is not a string")));
        };
        match m.get(key) {
            Some(v) => at = v,
            None => return Ok(fallback.clone()),
        }
    }
    Ok(at.clone())
}

/// `lookup API_VERSION KIND NAMESPACE NAME`: the object as the API server returns it, or an
/// empty dict (what helm gives when there is none, and always under `helm template`); with
/// NAME "", the list of them.
fn lookup(args: &[Value]) -> Result<Value, FuncError> {
    let [api_version, kind, namespace, name] = args else {
        return Err(FuncError::ExactlyXArgs("lookup".into(), 4));
    };
    let (api_version, kind, namespace, name) =
        (text(api_version), text(kind), text(namespace), text(name));
    let found: Vec<Json> = CLUSTER.with(|c| {
        c.borrow()
            .iter()
            .filter(|o| o["apiVersion"] == api_version.as_str() && o["kind"] == kind.as_str())
            .filter(|o| namespace.is_empty() || o["metadata"]["namespace"] == namespace.as_str())
            .filter(|o| name.is_empty() || o["metadata"]["name"] == name.as_str())
            .cloned()
            .collect()
    });
    Ok(match found.first() {
        _ if name.is_empty() => to_gtmpl(&serde_json::json!({
            "apiVersion": api_version, "kind": format!("{kind}List"), "metadata": {}, "items": found,
        })),
        Some(object) => to_gtmpl(object),
        None => Value::Map(HashMap::new()),
    })
}

/// `fromYaml TEXT`: the YAML document as a dict; on bad YAML a dict whose `Error` says why
/// (helm's behaviour: the template goes on).
fn from_yaml(args: &[Value]) -> Result<Value, FuncError> {
    let s = text(arg("fromYaml", args, 0)?);
    Ok(match serde_yaml_ng::from_str::<Json>(&s) {
        Ok(Json::Object(m)) => to_gtmpl(&Json::Object(m)),
        Ok(Json::Null) => Value::Map(HashMap::new()),
        Ok(other) => map([(
            "Error",
            format!("error unmarshaling JSON: cannot unmarshal {other} into a map").into(),
        )]),
        Err(e) => map([("Error", e.to_string().into())]),
    })
}

#[test]
fn chart_renderer_behaves_like_helm() {
    let values = serde_json::json!({"m": {"b": 2, "a": "x y"}, "n": 3, "empty": ""});
    let files = vec![
        (
            "c/templates/_h.tpl".to_owned(),
            "{{- define \"c.l\" -}}\nname: {{ .Release.Name }}\nns: {{ .Release.Namespace }}\n{{- end }}"
                .to_owned(),
        ),
        (
            "c/templates/a.yaml".to_owned(),
            concat!(
                "labels:\n  {{- include \"c.l\" . | nindent 2 }}\n",
                "m:\n  {{- toYaml .Values.m | nindent 2 }}\n",
                "q: {{ .Values.m.a | quote }} {{ .Values.n | quote }}\n",
                "d: {{ .Values.empty | default \"fallback\" }} {{ .Values.missing }}\n",
                "{{- if gt (int .Values.n) 1 }}\nbig: {{ printf \"%s-%d\" \"n\" (int .Values.n) }}\n{{- end }}\n",
                "i: |\n{{ \"a\\nb\" | indent 4 }}\n",
                "b: {{ \"hi\" | b64enc }} {{ \"  t \" | trim }} {{ \"\" | sha256sum }}\n",
            )
            .to_owned(),
        ),
    ];
    let chart = Chart { meta: serde_json::json!({"name": "c"}), values, files };
    let release = Release { name: "r", namespace: "ns" };
    let out = chart.render(&release, &serde_json::json!({})).expect("renders");
    assert_eq!(
        out.files[0].1,
        concat!(
            "labels:\n  name: r\n  ns: ns\n",
            "m:\n  a: x y\n  b: 2\n",
            "q: \"x y\" \"3\"\n",
            "d: fallback \n",
            "big: n-3\n",
            "i: |\n    a\n    b\n",
            "b: aGk= t e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n",
        )
    );
    // lookup (helm template: nothing; an upgrade: the cluster's object), dig, list, fromYaml.
    let cluster = Chart {
        meta: chart.meta.clone(),
        values: serde_json::json!({}),
        files: vec![(
            "c/templates/l.yaml".into(),
            concat!(
                "{{- $s := lookup \"v1\" \"Secret\" .Release.Namespace \"s\" }}\n",
                "found: {{ if $s }}yes{{ else }}no{{ end }}\n",
                "x: {{ dig \"data\" \"x\" \"none\" $s }} {{ dig \"data\" \"n\" \"none\" $s }}\n",
                "l: {{ len (list 1 \"a\") }}\n",
                "{{- $y := \"a: 1\\nb: [x]\" | fromYaml }}\n",
                "y: {{ $y.a }} {{ index $y.b 0 }} {{ (\"- 1\" | fromYaml).Error | len | lt 0 }}\n",
            )
            .into(),
        )],
    };
    let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s", "namespace": "ns"}, "data": {"x": "eHg=", "n": null}});
    let other_ns = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s", "namespace": "elsewhere"}, "data": {"x": "eHg="}});
    let nothing = "\nfound: no\nx: none none\nl: 2\ny: 1 x true\n";
    let out = cluster.render(&release, &serde_json::json!({})).expect("renders");
    assert_eq!(out.files[0].1, nothing);
    let out = cluster.render_in(&release, &serde_json::json!({}), &[other_ns]).expect("renders");
    assert_eq!(out.files[0].1, nothing);
    let out = cluster.render_in(&release, &serde_json::json!({}), &[secret]).expect("renders");
    assert_eq!(out.files[0].1, "\nfound: yes\nx: eHg= \nl: 2\ny: 1 x true\n");

    let failing = Chart {
        meta: chart.meta.clone(),
        values: serde_json::json!({}),
        files: vec![(
            "c/templates/b.yaml".into(),
            "{{ required \"x is required\" .Values.x }}".into(),
        )],
    };
    let e = failing.render(&release, &serde_json::json!({})).err().expect("x is missing");
    assert!(e.contains("x is required"), "{e}");
}
