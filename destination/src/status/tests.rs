use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::*;
use crate::policy::route::{GrpcRoute, HttpRoute};

const T0: &str = "2026-11-29T10:00:00Z";
const T1: &str = "2026-11-29T11:00:00Z";

#[derive(Default)]
struct World {
    servers: HashMap<ObjKey, ProxyProtocol>,
    services: HashSet<ObjKey>,
    /// Route → the older route it loses to.
    rivals: HashMap<ObjKey, ObjKey>,
}

impl World {
    fn with_server(mut self, name: &str, protocol: ProxyProtocol) -> Self {
        self.servers.insert(ObjKey::new("prod", name), protocol);
        self
    }
    fn with_service(mut self, name: &str) -> Self {
        self.services.insert(ObjKey::new("prod", name));
        self
    }
}

impl Cluster for World {
    fn server(&self, key: &ObjKey) -> Option<ProxyProtocol> {
        self.servers.get(key).copied()
    }
    fn service_exists(&self, key: &ObjKey) -> bool {
        self.services.contains(key)
    }
    fn split_rival(&self, route: &ObjKey, _: &Apex) -> Option<ObjKey> {
        self.rivals.get(route).cloned()
    }
}

fn meta(generation: i64) -> ObjectMeta {
    serde_json::from_value(json!({
        "name": "web", "namespace": "prod", "generation": generation, "resourceVersion": "7"
    }))
    .unwrap()
}

fn server_ref(name: &str) -> Value {
    json!({"group": "policy.weft.dev", "kind": "Server", "name": name})
}

/// A `policy.weft.dev` HTTPRoute as the watch reads it (its unusable reason included).
fn policy_route(spec: Value, status: Value) -> (RouteId, Route) {
    let parsed = HttpRoute::parse(ObjKey::new("prod", "web"), None, &spec).unwrap();
    let decisions = Decisions { unusable: parsed.unusable.as_ref(), split: None };
    Route::read(RouteKind::PolicyHttp, &meta(2), &spec, &status, decisions).unwrap()
}

fn gateway_route(spec: Value, status: Value) -> (RouteId, Route) {
    let (split, problems) = SplitRoute::from_k8s(&meta(2), &spec).unwrap();
    let parsed = HttpRoute::parse_gateway(ObjKey::new("prod", "web"), None, &spec).unwrap();
    let decisions =
        Decisions { unusable: parsed.unusable.as_ref(), split: Some((&split, &problems)) };
    Route::read(RouteKind::GatewayHttp, &meta(2), &spec, &status, decisions).unwrap()
}

/// (type, status, reason) of each condition of each of our entries.
fn conditions(parents: &[Value]) -> Vec<Vec<(String, String, String)>> {
    parents
        .iter()
        .filter(|e| is_ours(e))
        .map(|e| {
            e["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    let s = |k: &str| c[k].as_str().unwrap().to_string();
                    (s("type"), s("status"), s("reason"))
                })
                .collect()
        })
        .collect()
}

fn c(kind: &str, status: &str, reason: &str) -> (String, String, String) {
    (kind.into(), status.into(), reason.into())
}

#[test]
fn an_accepted_route_says_so_for_each_handled_parent() {
    let spec = json!({
        "parentRefs": [server_ref("web-http"), {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}],
        "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]
    });
    let (id, route) = policy_route(spec, json!({}));
    let world = World::default().with_server("web-http", ProxyProtocol::Http1).with_service("web");
    let parents = route.desired(&id, &world, T0);
    // The Gateway is not ours to speak for: one entry.
    assert_eq!(parents.len(), 1, "{parents:#?}");
    let e = &parents[0];
    assert_eq!(e["parentRef"], server_ref("web-http"), "as written");
    assert_eq!(e["controllerName"], CONTROLLER_NAME);
    assert_eq!(
        conditions(&parents),
        [vec![c("Accepted", "True", "Accepted"), c("ResolvedRefs", "True", "ResolvedRefs")]]
    );
    for cond in e["conditions"].as_array().unwrap() {
        assert_eq!(cond["observedGeneration"], 2);
        assert_eq!(cond["lastTransitionTime"], T0);
        assert_eq!(cond["message"], "");
    }
}

#[test]
fn missing_parents_and_backends_are_false_with_the_reason() {
    let spec = json!({
        "parentRefs": [server_ref("web-http")],
        "rules": [{"backendRefs": [{"name": "web-canary", "port": 80}]}]
    });
    let (id, route) = policy_route(spec, json!({}));
    let parents = route.desired(&id, &World::default(), T0);
    assert_eq!(
        conditions(&parents),
        [vec![
            c("Accepted", "False", "NoMatchingParent"),
            c("ResolvedRefs", "False", "BackendNotFound")
        ]]
    );
    let message = parents[0]["conditions"][1]["message"].as_str().unwrap();
    assert!(message.contains("web-canary"), "{message}");

    // Backends that cannot be used at all.
    for (backend, reason) in [
        (json!({"group": "apps", "kind": "Deployment", "name": "web"}), "InvalidKind"),
        (json!({"name": "web", "namespace": "other", "port": 80}), "RefNotPermitted"),
    ] {
        let spec =
            json!({"parentRefs": [server_ref("web-http")], "rules": [{"backendRefs": [backend]}]});
        let (id, route) = policy_route(spec, json!({}));
        let world =
            World::default().with_server("web-http", ProxyProtocol::Http1).with_service("web");
        let parents = route.desired(&id, &world, T0);
        assert_eq!(
            conditions(&parents),
            [vec![c("Accepted", "True", "Accepted"), c("ResolvedRefs", "False", reason)]]
        );
    }
}

#[test]
fn what_the_data_plane_cannot_do_is_not_accepted() {
    let world = World::default()
        .with_server("web-http", ProxyProtocol::Http1)
        .with_server("web-grpc", ProxyProtocol::Grpc);
    // A filter the proxy does not apply: the policy code's `unsupported_filter`.
    let spec = json!({
        "parentRefs": [server_ref("web-http")],
        "rules": [{"filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "a"}}]}]
    });
    let (id, route) = policy_route(spec, json!({}));
    let parents = route.desired(&id, &world, T0);
    assert_eq!(conditions(&parents)[0][0], c("Accepted", "False", "UnsupportedValue"));
    let message = parents[0]["conditions"][0]["message"].as_str().unwrap();
    assert!(message.contains("unsupported filter") && message.contains("URLRewrite"), "{message}");

    // An HTTPRoute on a gRPC Server, a Server of another namespace.
    let spec = json!({"parentRefs": [
        server_ref("web-grpc"),
        {"group": "policy.weft.dev", "kind": "Server", "name": "web-http", "namespace": "other"}
    ]});
    let (id, route) = policy_route(spec, json!({}));
    let reasons: Vec<_> =
        conditions(&route.desired(&id, &world, T0)).into_iter().map(|e| e[0].clone()).collect();
    assert_eq!(
        reasons,
        [
            c("Accepted", "False", "NotAllowedByListeners"),
            c("Accepted", "False", "NotAllowedByListeners")
        ]
    );

    // A GRPCRoute with a regex match (`unsupported_match`), on a gRPC Server.
    let spec = json!({
        "parentRefs": [server_ref("web-grpc")],
        "rules": [{"matches": [{"method": {"type": "RegularExpression", "service": "a.*"}}]}]
    });
    let parsed = GrpcRoute::parse(ObjKey::new("prod", "web"), None, &spec).unwrap();
    let decisions = Decisions { unusable: parsed.unusable.as_ref(), split: None };
    let (id, route) =
        Route::read(RouteKind::GatewayGrpc, &meta(1), &spec, &json!({}), decisions).unwrap();
    let parents = route.desired(&id, &world, T0);
    assert_eq!(conditions(&parents)[0][0], c("Accepted", "False", "UnsupportedValue"));
}

fn id_for_split() -> RouteId {
    RouteId { kind: RouteKind::GatewayHttp, key: ObjKey::new("prod", "web") }
}

fn route_for_split(service: &Value) -> Route {
    let spec = json!({"parentRefs": [service], "rules": [{"backendRefs": [{"name": "web-canary", "port": 80}]}]});
    gateway_route(spec, json!({})).1
}

#[test]
fn service_parents_are_accepted_when_the_route_is_a_split() {
    let service = json!({"group": "core", "kind": "Service", "name": "web", "port": 80});
    let world = World::default().with_service("web").with_service("web-canary");
    let split = json!({
        "parentRefs": [service.clone()],
        "rules": [{"backendRefs": [{"name": "web-canary", "port": 80}]}]
    });
    let (id, route) = gateway_route(split, json!({}));
    assert_eq!(
        conditions(&route.desired(&id, &world, T0)),
        [vec![c("Accepted", "True", "Accepted"), c("ResolvedRefs", "True", "ResolvedRefs")]]
    );
    // Rules that send to the parent itself are its profile's routes: accepted.
    let own =
        json!({"parentRefs": [service.clone()], "rules": [{}, {"timeouts": {"request": "1s"}}]});
    let (id, route) = gateway_route(own, json!({}));
    assert_eq!(
        conditions(&route.desired(&id, &world, T0))[0][0],
        c("Accepted", "True", "Accepted")
    );
    // Two rules cannot be a split: the split's own reason.
    let two = json!({"parentRefs": [service.clone()], "rules": [
        {}, {"backendRefs": [{"name": "web-canary", "port": 80}]}
    ]});
    let (id, route) = gateway_route(two, json!({}));
    let parents = route.desired(&id, &world, T0);
    assert_eq!(conditions(&parents)[0][0], c("Accepted", "False", "UnsupportedValue"));
    assert!(parents[0]["conditions"][0]["message"].as_str().unwrap().contains("2 rules"));
    // An older route splits the same Service port: this one loses.
    let mut losing = World::default().with_service("web").with_service("web-canary");
    losing.rivals.insert(ObjKey::new("prod", "web"), ObjKey::new("prod", "older"));
    let parents = route_for_split(&service).desired(&id_for_split(), &losing, T0);
    assert_eq!(conditions(&parents)[0][0], c("Accepted", "False", "RouteReasonConflicted"));
    assert!(parents[0]["conditions"][0]["message"].as_str().unwrap().contains("older"));
    // A missing Service; a consumer route; sectionName.
    let missing = json!({"parentRefs": [{"group": "core", "kind": "Service", "name": "api"}]});
    let (id, route) = gateway_route(missing, json!({}));
    assert_eq!(
        conditions(&route.desired(&id, &world, T0))[0][0],
        c("Accepted", "False", "NoMatchingParent")
    );
    let others = json!({"parentRefs": [
        {"group": "core", "kind": "Service", "name": "web", "namespace": "other"},
        {"group": "core", "kind": "Service", "name": "web", "sectionName": "http"}
    ]});
    let (id, route) = gateway_route(others, json!({}));
    let reasons: Vec<_> =
        conditions(&route.desired(&id, &world, T0)).into_iter().map(|e| e[0].clone()).collect();
    assert_eq!(reasons, vec![c("Accepted", "False", "UnsupportedValue"); 2]);
}

#[test]
fn other_controllers_entries_are_kept_where_they_are_and_stale_ones_of_ours_go() {
    let theirs = json!({
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"},
        "controllerName": "example.com/gateway",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": T0}]
    });
    let stale = json!({
        "parentRef": server_ref("gone"),
        "controllerName": CONTROLLER_NAME,
        "conditions": []
    });
    let spec = json!({"parentRefs": [server_ref("web-http")]});
    let (id, route) = policy_route(spec, json!({"parents": [stale, theirs.clone()]}));
    let world = World::default().with_server("web-http", ProxyProtocol::Http1);
    let parents = route.desired(&id, &world, T0);
    assert_eq!(parents.len(), 2, "{parents:#?}");
    assert_eq!(parents[0], theirs, "untouched");
    assert_eq!(parents[1]["parentRef"], server_ref("web-http"));
}

#[test]
fn a_status_already_right_computes_to_itself_and_transitions_are_dated() {
    let spec = json!({
        "parentRefs": [server_ref("web-http")],
        "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]
    });
    let world = World::default().with_server("web-http", ProxyProtocol::Http1);
    let (id, route) = policy_route(spec.clone(), json!({}));
    let first = route.desired(&id, &world, T0);
    assert_ne!(first, route.observed);

    // Written: later it computes to exactly what it has, whatever the time.
    let (id, route) = policy_route(spec.clone(), json!({"parents": first.clone()}));
    assert_eq!(route.desired(&id, &world, T1), first);
    let mut statuses = RouteStatuses::default();
    statuses.apply(id.clone(), route);
    assert!(statuses.pending(&world, T1).is_empty());

    // The backend appears: ResolvedRefs changes (dated now), Accepted keeps its date.
    let world = world.with_service("web");
    let pending = statuses.pending(&world, T1);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].resource_version.as_deref(), Some("7"));
    let conds = pending[0].parents[0]["conditions"].as_array().unwrap().clone();
    assert_eq!(
        (conds[0]["status"].as_str(), conds[0]["lastTransitionTime"].as_str()),
        (Some("True"), Some(T0))
    );
    assert_eq!(
        (conds[1]["status"].as_str(), conds[1]["lastTransitionTime"].as_str()),
        (Some("True"), Some(T1))
    );

    // What the write left is observed: nothing more to do; an older version is not.
    statuses.observe(&id, Some("8".into()), pending[0].parents.clone());
    assert!(statuses.pending(&world, T1).is_empty());
    statuses.observe(&id, Some("6".into()), Vec::new());
    assert!(statuses.pending(&world, T1).is_empty());

    // A new generation is a new observedGeneration.
    let mut m = meta(3);
    m.resource_version = Some("9".into());
    let parsed = HttpRoute::parse(ObjKey::new("prod", "web"), None, &spec).unwrap();
    let decisions = Decisions { unusable: parsed.unusable.as_ref(), split: None };
    let status = json!({"parents": pending[0].parents.clone()});
    let (id, route) = Route::read(RouteKind::PolicyHttp, &m, &spec, &status, decisions).unwrap();
    statuses.apply(id, route);
    let pending = statuses.pending(&world, T1);
    assert_eq!(pending[0].parents[0]["conditions"][0]["observedGeneration"], 3);
    assert_eq!(pending[0].parents[0]["conditions"][0]["lastTransitionTime"], T0);
}

#[test]
fn routes_we_handle_no_parent_of_and_unreadable_ones_are_left_alone() {
    let world = World::default();
    let spec = json!({"parentRefs": [{"name": "gw"}]});
    let (id, route) = gateway_route(spec, json!({}));
    assert!(route.parents.is_empty());
    let mut statuses = RouteStatuses::default();
    statuses.apply(id, route);
    assert!(statuses.pending(&world, T0).is_empty());
    // A GRPCRoute's Service parent is not split: not ours either.
    let spec = json!({"parentRefs": [{"group": "core", "kind": "Service", "name": "web"}]});
    let (_, route) =
        Route::read(RouteKind::GatewayGrpc, &meta(1), &spec, &json!({}), Decisions::default())
            .unwrap();
    assert!(route.parents.is_empty());
    let bad = json!({"parentRefs": "all"});
    assert!(
        Route::read(RouteKind::GatewayHttp, &meta(1), &bad, &json!({}), Decisions::default())
            .is_none()
    );
    let nameless = ObjectMeta::default();
    assert!(
        Route::read(
            RouteKind::GatewayHttp,
            &nameless,
            &json!({}),
            &json!({}),
            Decisions::default()
        )
        .is_none()
    );

    // Reset replaces one kind's routes only.
    let (id, route) = policy_route(json!({"parentRefs": [server_ref("a")]}), json!({}));
    statuses.apply(id.clone(), route);
    statuses.reset(RouteKind::GatewayHttp, Vec::new());
    assert_eq!(statuses.len(), 1);
    assert!(statuses.get(&id).is_some());
}

#[test]
fn long_messages_are_cut_at_a_character() {
    let spec = json!({"parentRefs": [server_ref("web-http")], "hostnames": ["é".repeat(1500)]});
    let (id, route) = policy_route(spec, json!({}));
    let world = World::default().with_server("web-http", ProxyProtocol::Http1);
    let parents = route.desired(&id, &world, T0);
    assert_eq!(conditions(&parents)[0][0], c("Accepted", "False", "UnsupportedValue"));
    let message = parents[0]["conditions"][0]["message"].as_str().unwrap();
    assert!(message.starts_with("invalid spec: hostname"), "{message}");
    assert!((1020..=MAX_MESSAGE).contains(&message.len()), "{}", message.len());
}
