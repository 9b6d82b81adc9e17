//! End-to-end tests of the admin API on a real `ebbtide` process.

mod common;

use common::*;
use http::{Request, StatusCode};
use std::net::SocketAddr;
use std::time::Duration;

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

async fn backends(admin: SocketAddr) -> Vec<serde_json::Value> {
    let (status, _, body) = get(&url(admin, "/api/v1/backends")).await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn register_list_and_delete_backends() {
    let b = test_backend("dyn").await;
    let lb = start_ebbtide(&base_config(""));
    assert!(backends(lb.admin).await.is_empty());

    // With no backend, a request waits in the queue and then is shed.
    let reg = format!(r#"{{"address": "{}", "capacity": 4, "weight": 2}}"#, b.addr);
    let (status, _, reply) = send(
        Request::post(url(lb.admin, "/api/v1/backends"))
            .body(body(reg.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{reply:?}");
    let created: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(created["address"], b.addr.to_string());
    assert_eq!(created["state"], "active");
    assert_eq!(created["capacity"], 4);
    assert_eq!(created["weight"], 2);

    // Registering the same address again renews rather than duplicates.
    let (status, _, _) = send(
        Request::post(url(lb.admin, "/api/v1/backends"))
            .body(body(reg))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let list = backends(lb.admin).await;
    assert_eq!(list.len(), 1);
    for key in ["id", "address", "state", "in_flight", "capacity", "weight"] {
        assert!(list[0].get(key).is_some(), "missing {key}: {}", list[0]);
    }
    // The typed client reads the same list.
    let typed = admin_backends(lb.admin).await;
    assert_eq!(typed.len(), 1);
    assert_eq!(typed[0].id, list[0]["id"].as_u64().unwrap());
    assert_eq!(typed[0].address, b.addr.to_string());
    assert_eq!((typed[0].capacity, typed[0].weight), (Some(4), 2));

    let (status, _, _) = get(&url(lb.addr, "/")).await;
    assert_eq!(status, StatusCode::OK);

    let id = list[0]["id"].as_u64().unwrap();
    let (status, _, reply) = send(
        Request::delete(url(lb.admin, &format!("/api/v1/backends/{id}")))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let v: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(v["state"], "draining");
    let drained: ebbtide_balancer::api::BackendInfo = serde_json::from_slice(&reply).unwrap();
    assert_eq!(
        (drained.id, drained.state),
        (id, ebbtide_balancer::api::BackendState::Draining)
    );
    // Idle, so the drain ends at once and the backend is removed.
    eventually(
        "the drained backend to be removed",
        Duration::from_secs(5),
        || async { backends(lb.admin).await.is_empty().then_some(()) },
    )
    .await;
    let (status, _, _) = send(
        Request::delete(url(lb.admin, &format!("/api/v1/backends/{id}")))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_registrations_get_a_400_that_says_why() {
    let lb = start_ebbtide(&base_config(""));
    for (body_text, needle) in [
        ("not json", "expected"),
        (r#"{"address": "127.0.0.1:9", "capacity": 0}"#, "capacity"),
        (r#"{"address": "no-port"}"#, "host:port"),
        (
            r#"{"address": "127.0.0.1:9", "colour": "red"}"#,
            "unknown field",
        ),
        (
            r#"{"address": "127.0.0.1:9", "lease_seconds": -1}"#,
            "lease_seconds",
        ),
    ] {
        let (status, _, reply) = send(
            Request::post(url(lb.admin, "/api/v1/backends"))
                .body(body(body_text))
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body_text}");
        assert!(
            String::from_utf8_lossy(&reply).contains(needle),
            "{body_text}: {reply:?}"
        );
    }
    let (status, _, _) = send(
        Request::delete(url(lb.admin, "/api/v1/backends/abc"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = get(&url(lb.admin, "/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        backends(lb.admin).await.is_empty(),
        "nothing was registered"
    );
}

#[tokio::test]
async fn a_lease_that_is_not_renewed_expires_and_a_renewed_one_stays() {
    let a = test_backend("a").await;
    let b = test_backend("b").await;
    let lb = start_ebbtide(&base_config(""));
    let reg = |addr: SocketAddr| format!(r#"{{"address": "{addr}", "lease_seconds": 2}}"#);
    for addr in [a.addr, b.addr] {
        let (status, _, _) = send(
            Request::post(url(lb.admin, "/api/v1/backends"))
                .body(body(reg(addr)))
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    // Renew b every 500 ms for 4 s; a's lease runs out after 2 s.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, _, _) = send(
            Request::post(url(lb.admin, "/api/v1/backends"))
                .body(body(reg(b.addr)))
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let list = backends(lb.admin).await;
    let addrs: Vec<&str> = list
        .iter()
        .map(|v| v["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        addrs,
        vec![b.addr.to_string().as_str()],
        "only the renewed backend is left"
    );
}

#[tokio::test]
async fn metrics_and_signals_use_the_documented_names() {
    let b = test_backend("a").await;
    let lb = start_ebbtide(&base_config(&backends_toml(&[b.addr], Some(8))));
    for _ in 0..20 {
        assert_eq!(get(&url(lb.addr, "/")).await.0, StatusCode::OK);
    }
    let (status, headers, metrics) = get(&url(lb.admin, "/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let metrics = String::from_utf8_lossy(&metrics);
    for name in [
        format!(
            "ebbtide_requests_total{{backend=\"{}\",code=\"200\"}} 20",
            b.addr
        ),
        "ebbtide_request_duration_seconds_bucket{le=\"+Inf\"} 20".to_string(),
        "ebbtide_request_duration_seconds_count 20".to_string(),
        "ebbtide_queue_depth 0".to_string(),
        format!("ebbtide_backend_in_flight{{backend=\"{}\"}} 0", b.addr),
        "ebbtide_backends{state=\"active\"} 1".to_string(),
        "ebbtide_shed_total{reason=\"queue_full\"} 0".to_string(),
        "ebbtide_retries_total 0".to_string(),
    ] {
        assert!(metrics.contains(&name), "missing `{name}` in\n{metrics}");
    }
    let (_, _, body) = get(&url(lb.admin, "/api/v1/signals")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let typed = admin_signals(lb.admin).await;
    assert_eq!(typed.arrivals_total, 20, "{typed:?}");
    assert_eq!(typed.backends.active, 1, "{typed:?}");
    assert_eq!(v["arrivals"], 20, "{v}");
    assert_eq!(v["completions"], 20, "{v}");
    assert_eq!(v["arrivals_total"], 20, "{v}");
    assert_eq!(v["completions_total"], 20, "{v}");
    assert!(v["arrival_rate"].as_f64().unwrap() > 0.0);
    assert!(v["completion_rate"].as_f64().unwrap() > 0.0);
    for k in ["p50", "p90", "p99"] {
        assert!(v["latency_ms"][k].as_f64().unwrap() > 0.0, "{v}");
    }
    assert_eq!(v["in_flight"], 0);
    assert_eq!(v["queue_depth"], 0);
    assert_eq!(v["backends"]["active"], 1);
    assert_eq!(v["shed_total"], 0);
    let (status, _, events) = get(&url(lb.admin, "/api/v1/events")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(serde_json::from_slice::<serde_json::Value>(&events)
        .unwrap()
        .is_array());
}

#[tokio::test]
async fn a_configured_token_is_required_except_for_healthz() {
    let lb = start_ebbtide(&base_config("").replace(
        "[admin]\naddress = \"127.0.0.1:0\"\n",
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n",
    ));
    let (status, headers, _) = get(&url(lb.admin, "/api/v1/backends")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, _) = send(
        Request::get(url(lb.admin, "/metrics"))
            .header("authorization", "Bearer wrong")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = send(
        Request::get(url(lb.admin, "/metrics"))
            .header("authorization", "Bearer s3cret")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(get(&url(lb.admin, "/healthz")).await.0, StatusCode::OK);
}
