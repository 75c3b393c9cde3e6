use serde_json::json;

use super::*;

fn meta(name: &str, created: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("test".into()),
        creation_timestamp: Some(Time(created.parse().unwrap())),
        ..Default::default()
    }
}

/// The route Flagger's `gatewayapi` provider writes for a Canary of Service `podinfo` in
/// mesh (GAMMA) mode, as the API server completes it (defaulted groups, kinds, rules).
fn flagger_spec() -> Value {
    json!({
        "parentRefs": [{"group": "core", "kind": "Service", "name": "podinfo", "port": 9898}],
        "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": [
                {"group": "", "kind": "Service", "name": "podinfo-primary", "port": 9898, "weight": 90},
                {"group": "", "kind": "Service", "name": "podinfo-canary", "port": 9898, "weight": 10},
            ],
        }],
    })
}

fn convert(spec: Value) -> (SplitRoute, Vec<Problem>) {
    SplitRoute::from_k8s(&meta("podinfo", "2025-05-12T09:14:03Z"), &spec).expect("has a name")
}

fn reasons(problems: &[Problem]) -> Vec<&'static str> {
    problems.iter().map(|p| p.reason).collect()
}

fn podinfo(port: Option<u16>) -> Apex {
    Apex { service: ObjKey::new("test", "podinfo"), port }
}

fn backend(name: &str, port: Option<u16>, weight: u32) -> Backend {
    Backend { service: ObjKey::new("test", name), port, weight }
}

#[test]
fn flagger_route_splits_its_parent() {
    let (route, problems) = convert(flagger_spec());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(route.key, ObjKey::new("test", "podinfo"));
    assert_eq!(route.apexes, [podinfo(Some(9898))]);
    assert_eq!(
        route.backends,
        [backend("podinfo-primary", Some(9898), 90), backend("podinfo-canary", Some(9898), 10)]
    );
    assert_eq!(
        overrides(&route.backends, 9898, "cluster.local."),
        [
            WeightedDst {
                authority: "podinfo-primary.test.svc.cluster.local:9898".into(),
                weight: 90
            },
            WeightedDst {
                authority: "podinfo-canary.test.svc.cluster.local:9898".into(),
                weight: 10
            },
        ]
    );
}

#[test]
fn defaults() {
    // No port on the parent: every port; none on a backend: the port asked for; no weight: 1;
    // no group or kind on a backend: a Service; no rules or no matches: every request.
    let (route, problems) = convert(json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "podinfo"}],
        "rules": [{"backendRefs": [{"name": "a"}, {"name": "b", "weight": 0}, {"name": "c", "port": 81}]}],
    }));
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(route.apexes, [podinfo(None)]);
    assert_eq!(
        route.backends,
        [backend("a", None, 1), backend("b", None, 0), backend("c", Some(81), 1)]
    );
    let dsts = overrides(&route.backends, 8080, "cluster.local");
    let dsts: Vec<_> = dsts.iter().map(|d| (d.authority.as_str(), d.weight)).collect();
    assert_eq!(
        dsts,
        [
            ("a.test.svc.cluster.local:8080", 1),
            ("b.test.svc.cluster.local:8080", 0),
            ("c.test.svc.cluster.local:81", 1)
        ]
    );
    // No rules at all (the API server would add the catch-all one): claims, splits nothing.
    let (route, problems) =
        convert(json!({"parentRefs": [{"kind": "Service", "name": "podinfo"}]}));
    assert!(problems.is_empty());
    assert_eq!(route.apexes, [podinfo(None)]);
    assert!(route.backends.is_empty());
    // A catch-all match written out, twice, and an explicit namespace equal to the route's.
    let (route, problems) = convert(json!({
        "parentRefs": [{"kind": "Service", "name": "podinfo", "namespace": "test", "port": 80}],
        "rules": [{"matches": [{}, {"path": {"value": "/"}}], "backendRefs": [{"name": "a", "namespace": "test"}]}],
    }));
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!((route.apexes.len(), route.backends.len()), (1, 1));
}

#[test]
fn routes_for_gateways_are_not_ours() {
    let (route, problems) = convert(json!({
        "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg"}],
        "hostnames": ["podinfo.example.com"],
        "rules": [{"matches": [{"path": {"type": "Exact", "value": "/x"}}], "backendRefs": [{"name": "a", "port": 80}]}],
    }));
    assert!(problems.is_empty(), "not a mesh route, not a problem: {problems:?}");
    assert!(route.apexes.is_empty());
    // A Gateway and a Service parent: the Service is split.
    let mut spec = flagger_spec();
    spec["parentRefs"]
        .as_array_mut()
        .unwrap()
        .push(json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg"}));
    assert_eq!(convert(spec).0.apexes, [podinfo(Some(9898))]);
}

#[test]
fn routes_that_are_not_splits_are_refused_whole() {
    let with = |f: &dyn Fn(&mut Value)| {
        let mut spec = flagger_spec();
        f(&mut spec);
        convert(spec)
    };
    type Edit<'a> = &'a dyn Fn(&mut Value);
    let cases: [(&str, Edit<'_>); 9] = [
        ("an Exact path", &|s| {
            s["rules"][0]["matches"][0]["path"] = json!({"type": "Exact", "value": "/"})
        }),
        ("another prefix", &|s| s["rules"][0]["matches"][0]["path"]["value"] = json!("/api")),
        ("a regex", &|s| {
            s["rules"][0]["matches"][0]["path"] =
                json!({"type": "RegularExpression", "value": ".*"})
        }),
        ("a header", &|s| {
            s["rules"][0]["matches"][0]["headers"] = json!([{"name": "x-canary", "value": "1"}])
        }),
        ("a query", &|s| {
            s["rules"][0]["matches"][0]["queryParams"] = json!([{"name": "v", "value": "2"}])
        }),
        ("a method", &|s| s["rules"][0]["matches"][0]["method"] = json!("GET")),
        ("a second match with a header", &|s| {
            s["rules"][0]["matches"]
                .as_array_mut()
                .unwrap()
                .push(json!({"headers": [{"name": "a", "value": "b"}]}))
        }),
        (
            "a filter",
            &|s| s["rules"][0]["filters"] = json!([{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "a", "value": "b"}]}}]),
        ),
        ("two rules", &|s| {
            let r = s["rules"][0].clone();
            s["rules"].as_array_mut().unwrap().push(r)
        }),
    ];
    for (what, f) in cases {
        let (route, problems) = with(f);
        assert!(route.apexes.is_empty() && route.backends.is_empty(), "{what}: {route:?}");
        assert_eq!(reasons(&problems), ["unsupported_route"], "{what}");
    }
    let (route, problems) = with(&|s| s["hostnames"] = json!(["podinfo"]));
    assert!(route.apexes.is_empty());
    assert_eq!(reasons(&problems), ["unsupported_route"]);
    // A parent named by sectionName (a port name): refused, the problem says to use port.
    let (route, problems) = with(&|s| {
        s["parentRefs"][0] =
            json!({"group": "core", "kind": "Service", "name": "podinfo", "sectionName": "http"})
    });
    assert!(route.apexes.is_empty());
    assert_eq!(reasons(&problems), ["unsupported_route"]);
    assert!(problems[0].detail.contains("port"), "{problems:?}");
    // A spec that is not an HTTPRoute's.
    let (route, problems) = convert(json!({"parentRefs": "podinfo"}));
    assert!(route.apexes.is_empty());
    assert_eq!(reasons(&problems), ["invalid_route"]);
}

#[test]
fn consumer_routes_and_bad_parents_are_skipped() {
    let mut spec = flagger_spec();
    spec["parentRefs"] = json!([
        {"group": "core", "kind": "Service", "name": "podinfo", "namespace": "other"},
        {"group": "core", "kind": "Service", "name": "podinfo", "port": 70000},
        {"group": "core", "kind": "Service", "name": "podinfo", "port": 0},
        {"group": "core", "kind": "Service", "name": "podinfo", "port": 9898},
    ]);
    let (route, problems) = convert(spec);
    assert_eq!(reasons(&problems), ["consumer_route", "invalid_route", "invalid_route"]);
    assert_eq!(route.apexes, [podinfo(Some(9898))], "the good parent stays");
    assert_eq!(route.backends.len(), 2);
    // Only another namespace's Service: nothing to split, and said why.
    let mut spec = flagger_spec();
    spec["parentRefs"][0]["namespace"] = json!("other");
    let (route, problems) = convert(spec);
    assert!(route.apexes.is_empty());
    assert_eq!(reasons(&problems), ["consumer_route"]);
}

#[test]
fn bad_backends_are_skipped_alone() {
    let mut spec = flagger_spec();
    spec["rules"][0]["backendRefs"] = json!([
        {"group": "", "kind": "Service", "name": "podinfo-primary", "port": 9898, "weight": 90},
        {"group": "multicluster.x-k8s.io", "kind": "ServiceImport", "name": "podinfo", "port": 9898},
        {"group": "", "kind": "Service", "name": "podinfo-canary", "namespace": "canary", "port": 9898},
        {"group": "", "kind": "Service", "name": "podinfo-f", "port": 9898, "filters": [{"type": "RequestHeaderModifier"}]},
        {"group": "", "kind": "Service", "name": "podinfo-p", "port": 0},
        {"group": "", "kind": "Service", "name": "podinfo-w", "port": 9898, "weight": -1},
        {"group": "", "kind": "Service", "name": "podinfo-big", "port": 9898, "weight": 1_000_001},
        {"group": "", "kind": "Service", "name": "podinfo-max", "port": 9898, "weight": 1_000_000},
        // Found by the k8s_discovery fuzzer: the proxy refused the authority it made.
        {"group": "", "kind": "Service", "name": "podinfo-canary>", "port": 9898},
        {"group": "", "kind": "Service", "name": "", "port": 9898},
    ]);
    let (route, problems) = convert(spec);
    assert_eq!(
        reasons(&problems),
        [
            "unsupported_backend",
            "cross_namespace_backend",
            "unsupported_backend",
            "invalid_route",
            "invalid_route",
            "invalid_route",
            "invalid_route",
            "invalid_route"
        ]
    );
    assert_eq!(route.apexes, [podinfo(Some(9898))]);
    assert_eq!(
        route.backends,
        [backend("podinfo-primary", Some(9898), 90), backend("podinfo-max", Some(9898), 1_000_000)]
    );
    assert!(problems.iter().all(|p| p.kind == ROUTE_KIND && p.object == "test/podinfo"));
}

#[test]
fn no_name_is_an_error() {
    let e = SplitRoute::from_k8s(&ObjectMeta::default(), &flagger_spec()).expect_err("no name");
    assert_eq!(e.reason, "missing_name");
}

fn route(name: &str, created: &str, port: Option<u16>, backends: &[&str]) -> SplitRoute {
    SplitRoute {
        key: ObjKey::new("test", name),
        created: Some(Time(created.parse().unwrap())),
        apexes: vec![podinfo(port)],
        backends: backends.iter().map(|b| backend(b, None, 1)).collect(),
        profile: None,
    }
}

fn names(b: &[Backend]) -> Vec<&str> {
    b.iter().map(|b| b.service.name.as_str()).collect()
}

#[test]
fn the_oldest_route_wins() {
    let svc = ObjKey::new("test", "podinfo");
    let mut splits = Splits::default();
    let (touched, problems) = splits.apply(route("b", "2025-01-02T00:00:00Z", None, &["b1"]));
    assert_eq!(touched, [svc.clone()].into());
    assert!(problems.is_empty());
    assert_eq!(names(splits.backends(&svc, 80)), ["b1"]);
    assert!(splits.backends(&ObjKey::new("test", "other"), 80).is_empty());

    // A younger route on one port loses there (reported once, not on every change).
    let (_, problems) = splits.apply(route("c", "2025-01-03T00:00:00Z", Some(80), &["c1"]));
    assert_eq!(reasons(&problems), ["route_conflict"]);
    assert!(problems[0].detail.contains("route b"), "{problems:?}");
    assert_eq!(names(splits.backends(&svc, 80)), ["b1"]);
    let (_, problems) = splits.apply(route("c", "2025-01-03T00:00:00Z", Some(80), &["c2"]));
    assert!(problems.is_empty(), "already reported: {problems:?}");

    // An older one takes every port; b now loses (the same age: the name settles it).
    let (_, problems) = splits.apply(route("a", "2025-01-02T00:00:00Z", None, &["a1"]));
    assert_eq!(reasons(&problems), ["route_conflict"]);
    assert_eq!(problems[0].object, "test/b");
    // Which route each loses to, where (route statuses ask).
    let key = |n: &str| ObjKey::new("test", n);
    assert_eq!(splits.rival_for(&key("b"), &podinfo(None)), Some(key("a")));
    assert_eq!(splits.rival_for(&key("c"), &podinfo(Some(80))), Some(key("a")), "the oldest");
    assert_eq!(splits.rival_for(&key("a"), &podinfo(None)), None);
    assert_eq!(splits.rival_for(&key("nope"), &podinfo(None)), None);
    assert_eq!(names(splits.backends(&svc, 80)), ["a1"]);
    assert_eq!(names(splits.backends(&svc, 81)), ["a1"]);

    // The winner goes: the next oldest takes over, on the ports it covers.
    let touched = splits.delete(&ObjKey::new("test", "a"));
    assert_eq!(touched, [svc.clone()].into());
    assert_eq!(names(splits.backends(&svc, 80)), ["b1"]);
    splits.delete(&ObjKey::new("test", "b"));
    assert_eq!(names(splits.backends(&svc, 80)), ["c2"]);
    assert!(splits.backends(&svc, 81).is_empty());
    // c lost before and wins now; if it loses again it is reported again.
    let (_, problems) = splits.apply(route("b", "2025-01-02T00:00:00Z", None, &["b1"]));
    assert_eq!(reasons(&problems), ["route_conflict"]);
    assert_eq!(problems[0].object, "test/c");

    // A relist without b and c: no split left.
    let (touched, problems) = splits.reset(vec![]);
    assert_eq!(touched, [svc.clone()].into());
    assert!(problems.is_empty());
    assert!(splits.backends(&svc, 80).is_empty());
    assert!(splits.routes.is_empty() && splits.by_service.is_empty() && splits.losing.is_empty());
}

#[test]
fn a_route_that_stops_splitting_frees_its_service() {
    let svc = ObjKey::new("test", "podinfo");
    let mut splits = Splits::default();
    splits.apply(route("a", "2025-01-01T00:00:00Z", None, &["a1"]));
    // Edited to something that cannot be a split: it converts to no apexes.
    let (touched, _) = splits.apply(SplitRoute {
        apexes: vec![],
        backends: vec![],
        ..route("a", "2025-01-01T00:00:00Z", None, &[])
    });
    assert_eq!(touched, [svc.clone()].into(), "the old service is refreshed");
    assert!(splits.backends(&svc, 80).is_empty());
    assert!(splits.winner(&svc, 80).is_none());

    // A losing route that stops splitting, then splits (and loses) again, is reported again.
    splits.apply(route("a", "2025-01-01T00:00:00Z", None, &["a1"]));
    let (_, problems) = splits.apply(route("b", "2025-01-02T00:00:00Z", None, &["b1"]));
    assert_eq!(reasons(&problems), ["route_conflict"]);
    splits.apply(SplitRoute { apexes: vec![], ..route("b", "2025-01-02T00:00:00Z", None, &[]) });
    let (_, problems) = splits.apply(route("b", "2025-01-02T00:00:00Z", None, &["b1"]));
    assert_eq!(reasons(&problems), ["route_conflict"]);
}

#[test]
fn static_splits() {
    #[derive(Deserialize)]
    struct F {
        splits: Vec<FileSplit>,
    }
    let parse = |y: &str| {
        let f: F = serde_yaml_ng::from_str(y).map_err(|e| e.to_string())?;
        FileSplits::parse(f.splits)
    };
    let s = parse(
        "splits:
  - {name: web, namespace: prod, backends: [{name: web-stable, weight: 90}, {name: web-canary, port: 8080, weight: 10}]}
  - {name: web, namespace: prod, port: 81, backends: []}
  - {name: api, namespace: prod, port: 80, backends: [{name: api-v2, namespace: next, weight: 0}]}",
    )
    .unwrap();
    assert_eq!(s.len(), 3);
    let web = ObjKey::new("prod", "web");
    assert_eq!(
        overrides(s.backends(&web, 80), 80, "cluster.local"),
        [
            WeightedDst { authority: "web-stable.prod.svc.cluster.local:80".into(), weight: 90 },
            WeightedDst { authority: "web-canary.prod.svc.cluster.local:8080".into(), weight: 10 },
        ]
    );
    assert!(s.backends(&web, 81).is_empty(), "the split with the port wins on it");
    let api = ObjKey::new("prod", "api");
    assert_eq!(
        s.backends(&api, 80),
        [Backend { service: ObjKey::new("next", "api-v2"), port: None, weight: 0 }]
    );
    assert!(s.backends(&api, 81).is_empty());
    for bad in [
        "splits: [{name: web, namespace: prod}, {name: web, namespace: prod}]",
        "splits: [{name: web, namespace: prod, port: 80}, {name: web, namespace: prod, port: 80}]",
        "splits: [{name: web, namespace: prod, port: 0}]",
        "splits: [{name: '', namespace: prod}]",
        "splits: [{name: web}]",
        "splits: [{name: web, namespace: prod, backends: [{name: a}]}]",
        "splits: [{name: web, namespace: prod, backends: [{name: a, weight: -1}]}]",
        "splits: [{name: web, namespace: prod, backends: [{name: a, weight: 1000001}]}]",
        "splits: [{name: web, namespace: prod, backends: [{name: a, port: 0, weight: 1}]}]",
        "splits: [{name: web, namespace: prod, backends: [{name: a, weight: 1, extra: 1}]}]",
        "splits: [{name: web, namespace: prod, backends: [{name: 'a>', weight: 1}]}]",
        "splits: [{name: web, namespace: prod, backends: [{name: a, namespace: Prod, weight: 1}]}]",
        "splits: [{name: web.x, namespace: prod}]",
    ] {
        assert!(parse(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn static_file_profiles_carry_the_split() {
    use crate::{
        policy::SharedPolicyIndex,
        resolve::{Discover as _, Target},
        static_source::{Catalog, StaticIndex},
    };
    let file = |weights: Option<(u32, u32)>| {
        let mut y = String::from(
            "services:\n  - {name: web, namespace: prod, clusterIPs: [10.96.0.10], ports: [{port: 80}]}\n",
        );
        if let Some((stable, canary)) = weights {
            y.push_str(&format!(
                "splits:\n  - name: web\n    namespace: prod\n    backends: [{{name: web-stable, weight: {stable}}}, {{name: web-canary, weight: {canary}}}]\n"
            ));
        }
        Catalog::parse(std::path::Path::new("f.yaml"), &y).expect("parses").0
    };
    let index =
        StaticIndex::new(file(Some((90, 10))), "cluster.local", SharedPolicyIndex::default());
    let dsts = |p: linkerd2_proxy_api::destination::DestinationProfile| {
        p.dst_overrides.into_iter().map(|d| (d.authority, d.weight)).collect::<Vec<_>>()
    };
    let by_name = Target::Service { key: ObjKey::new("prod", "web"), port: 80 };
    let by_ip = Target::Addr("10.96.0.10:80".parse().unwrap());
    let mut rx = index.resolve(&by_name).unwrap();
    let mut rx_ip = index.resolve(&by_ip).unwrap();
    let want = |s: u32, c: u32| {
        vec![
            ("web-stable.prod.svc.cluster.local:80".to_string(), s),
            ("web-canary.prod.svc.cluster.local:80".to_string(), c),
        ]
    };
    assert_eq!(dsts(rx.borrow_and_update().profile()), want(90, 10));
    assert_eq!(dsts(rx_ip.borrow_and_update().profile()), want(90, 10));
    index.replace(file(Some((50, 50))));
    assert!(rx.has_changed().unwrap() && rx_ip.has_changed().unwrap());
    assert_eq!(dsts(rx.borrow_and_update().profile()), want(50, 50));
    index.replace(file(None));
    assert!(dsts(rx.borrow_and_update().profile()).is_empty());
    assert!(dsts(rx_ip.borrow_and_update().profile()).is_empty());
}

#[test]
fn kubernetes_index_pushes_split_changes() {
    use crate::{
        index::{Index, IndexConfig},
        model::Service,
        resolve::Target,
    };
    let mut index = Index::new(IndexConfig::default());
    let svc = k8s_openapi::api::core::v1::Service {
        metadata: ObjectMeta {
            name: Some("podinfo".into()),
            namespace: Some("test".into()),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
            cluster_ip: Some("10.96.7.7".into()),
            ports: Some(vec![k8s_openapi::api::core::v1::ServicePort {
                port: 9898,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    index.apply_service(Service::from_k8s(&svc).unwrap().0);
    let mut by_name = index
        .subscribe(&Target::Service { key: ObjKey::new("test", "podinfo"), port: 9898 })
        .unwrap();
    let mut by_ip = index.subscribe(&Target::Addr("10.96.7.7:9898".parse().unwrap())).unwrap();
    let weights = |rx: &mut tokio::sync::watch::Receiver<
        std::sync::Arc<crate::resolve::Resolution>,
    >| {
        rx.borrow_and_update().profile.dst_overrides.iter().map(|d| d.weight).collect::<Vec<_>>()
    };
    assert!(weights(&mut by_name).is_empty());

    let (route, _) = convert(flagger_spec());
    assert!(index.apply_route(route).is_empty());
    assert!(by_name.has_changed().unwrap() && by_ip.has_changed().unwrap());
    assert_eq!(weights(&mut by_name), [90, 10]);
    assert_eq!(weights(&mut by_ip), [90, 10]);

    let mut spec = flagger_spec();
    spec["rules"][0]["backendRefs"][0]["weight"] = json!(0);
    spec["rules"][0]["backendRefs"][1]["weight"] = json!(100);
    index.apply_route(convert(spec).0);
    assert_eq!(weights(&mut by_name), [0, 100]);
    assert_eq!(weights(&mut by_ip), [0, 100]);

    // A younger route on the same parent loses and changes nothing.
    let (young, _) =
        SplitRoute::from_k8s(&meta("podinfo-2", "2026-01-01T00:00:00Z"), &flagger_spec()).unwrap();
    assert_eq!(reasons(&index.apply_route(young)), ["route_conflict"]);
    assert!(!by_name.has_changed().unwrap());

    index.delete_route(&ObjKey::new("test", "podinfo"));
    assert_eq!(weights(&mut by_name), [90, 10], "the younger route takes over");
    assert!(index.reset_routes(vec![]).is_empty());
    assert!(weights(&mut by_name).is_empty());
    assert!(weights(&mut by_ip).is_empty());
}

/// A Linkerd 2.16-style route: per-route timeouts for its parent Service itself.
fn own_routes_spec(backend_refs: Value) -> Value {
    json!({
        "parentRefs": [{"group": "core", "kind": "Service", "name": "podinfo", "port": 9898}],
        "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/slow"}}], "timeouts": {"request": "200ms"}, "backendRefs": backend_refs},
            {"backendRefs": backend_refs},
        ],
    })
}

#[test]
fn routes_to_the_parent_itself_are_profile_routes_not_splits() {
    let parent = json!([{"group": "", "kind": "Service", "name": "podinfo", "port": 9898}]);
    let unported = json!([{"name": "podinfo"}]);
    for refs in [json!([]), json!(null), parent.clone(), unported] {
        let mut spec = own_routes_spec(refs.clone());
        if refs.is_null() {
            spec["rules"][0].as_object_mut().unwrap().remove("backendRefs");
            spec["rules"][1].as_object_mut().unwrap().remove("backendRefs");
        }
        let (route, problems) = convert(spec);
        assert!(problems.is_empty(), "{refs}: {problems:?}");
        assert_eq!(route.apexes, [podinfo(Some(9898))], "{refs}");
        assert!(route.backends.is_empty(), "{refs}");
        let profile = route.profile.expect("profile routes");
        assert_eq!(profile.name, "podinfo");
        assert_eq!(profile.rules.len(), 2);
        assert_eq!(
            profile.rules[0].request_timeout,
            Some(crate::profile::routes::Limit::After(std::time::Duration::from_millis(200)))
        );
    }
    // No rules at all: one catch-all route.
    let (route, _) = convert(json!({"parentRefs": [{"kind": "Service", "name": "podinfo"}]}));
    assert_eq!(route.profile.unwrap().rules.len(), 1);

    // Another backend, another port of the parent, a weight of 0, a filter: still the
    // split's business (two rules: refused as before).
    for refs in [
        json!([{"name": "podinfo-canary", "port": 9898}]),
        json!([{"name": "podinfo", "port": 8080}]),
        json!([{"name": "podinfo", "port": 9898, "weight": 0}]),
        json!([{"name": "podinfo", "port": 9898, "filters": [{"type": "RequestHeaderModifier"}]}]),
        json!([{"group": "example.com", "kind": "Backend", "name": "podinfo"}]),
    ] {
        let (route, problems) = convert(own_routes_spec(refs.clone()));
        assert!(route.profile.is_none() && route.apexes.is_empty(), "{refs}");
        assert_eq!(reasons(&problems), ["unsupported_route"], "{refs}");
    }
    // Host names: refused whole, as for a split.
    let mut spec = own_routes_spec(json!([]));
    spec["hostnames"] = json!(["podinfo.example.com"]);
    let (route, problems) = convert(spec);
    assert!(route.profile.is_none() && route.apexes.is_empty());
    assert_eq!(reasons(&problems), ["unsupported_route"]);
    // A rule it cannot express is skipped alone; the rest applies.
    let mut spec = own_routes_spec(json!([]));
    spec["rules"][1]["matches"] = json!([{"headers": [{"name": "x-debug", "value": "1"}]}]);
    let (route, problems) = convert(spec);
    assert_eq!(reasons(&problems), ["unsupported_rule"]);
    assert_eq!(route.profile.unwrap().rules.len(), 1);
}

#[test]
fn kubernetes_index_serves_the_oldest_routes_of_a_service_port() {
    use crate::{
        index::{Index, IndexConfig},
        model::Service,
        resolve::Target,
    };
    let mut index = Index::new(IndexConfig::default());
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "podinfo", "namespace": "test", "annotations": {"timeout.weft.dev/request": "5s"}},
        "spec": {"clusterIP": "10.96.7.7", "ports": [{"port": 9898}]}
    }))
    .unwrap();
    index.apply_service(Service::from_k8s(&svc).unwrap().0);
    let mut rx = index
        .subscribe(&Target::Service { key: ObjKey::new("test", "podinfo"), port: 9898 })
        .unwrap();
    let timeouts =
        |rx: &mut tokio::sync::watch::Receiver<std::sync::Arc<crate::resolve::Resolution>>| {
            let profile = rx.borrow_and_update().profile();
            profile
                .routes
                .iter()
                .map(|r| r.timeout.map(|t| t.nanos / 1_000_000 + t.seconds as i32 * 1000))
                .collect::<Vec<_>>()
        };
    assert_eq!(timeouts(&mut rx), [Some(5000)]);

    let (route, _) = convert(own_routes_spec(json!([])));
    assert!(index.apply_route(route).is_empty());
    assert_eq!(timeouts(&mut rx), [Some(200), Some(5000), Some(5000)]);

    // A younger route on the same port loses; an older one wins.
    let mut spec = own_routes_spec(json!([]));
    spec["rules"][0]["timeouts"]["request"] = json!("300ms");
    let (young, _) =
        SplitRoute::from_k8s(&meta("podinfo-young", "2026-01-01T00:00:00Z"), &spec).unwrap();
    assert_eq!(reasons(&index.apply_route(young)), ["route_conflict"]);
    assert!(!rx.has_changed().unwrap());
    spec["rules"][0]["timeouts"]["request"] = json!("400ms");
    let (old, _) =
        SplitRoute::from_k8s(&meta("podinfo-old", "2024-01-01T00:00:00Z"), &spec).unwrap();
    index.apply_route(old);
    assert_eq!(timeouts(&mut rx), [Some(400), Some(5000), Some(5000)]);
    // The routes go: the Service's catch-all alone.
    assert!(index.reset_routes(vec![]).is_empty());
    assert_eq!(timeouts(&mut rx), [Some(5000)]);
}
