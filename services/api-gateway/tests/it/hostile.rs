//! Hostile input in every parameter gets a 4xx problem document, never a 5xx.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

const HOSTILE: &[&str] = &[
    "' OR '1'='1",
    "1; DROP TABLE agents; --",
    "../../../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "%00",
    "\u{0}",
    "ａｂｃ１２３",
    "🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂🙂",
    "a1b2c3d4e5f6*",
    "ops.>",
    "<script>alert(1)</script>",
    "${jndi:ldap://x}",
    "-1",
    "99999999999999999999999999",
    "NaN",
];

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn hostile_strings_in_every_parameter_get_4xx() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("hostile", 1).await;
    let agent = fleet.agents()[0].id.to_string();
    let huge = "x".repeat(10_000);
    let mut inputs: Vec<String> = HOSTILE.iter().map(|s| (*s).to_owned()).collect();
    inputs.push(huge);

    let mut failures = Vec::new();
    for input in &inputs {
        let e = encode(input);
        let requests: Vec<(Method, String, Option<serde_json::Value>)> = vec![
            (Method::GET, format!("/api/v1/agents/{e}"), None),
            (Method::GET, format!("/api/v1/agents/{e}/incidents"), None),
            (Method::GET, format!("/api/v1/agents/{e}/inventory"), None),
            (Method::DELETE, format!("/api/v1/agents/{e}"), None),
            (Method::POST, format!("/api/v1/agents/{e}/execute"), Some(json!({"command": "ping"}))),
            (Method::GET, format!("/api/v1/incidents/{e}"), None),
            (Method::PATCH, format!("/api/v1/incidents/{e}"), Some(json!({"status": "resolved"}))),
            (Method::POST, format!("/api/v1/incidents/{e}/analyze"), None),
            (Method::GET, format!("/api/v1/agents?status={e}"), None),
            (Method::GET, format!("/api/v1/agents?hostname_prefix={e}"), None),
            (Method::GET, format!("/api/v1/agents?after={e}"), None),
            (Method::GET, format!("/api/v1/agents?limit={e}"), None),
            (Method::GET, format!("/api/v1/agents/{agent}/incidents?status={e}"), None),
            (Method::GET, format!("/api/v1/agents/{agent}/incidents?before={e}"), None),
            (Method::GET, format!("/api/v1/agents/{agent}/inventory/diff?from={e}&to=1"), None),
            (Method::GET, format!("/api/v1/audit?agent_id={e}"), None),
            (Method::DELETE, format!("/api/v1/enrollment-tokens/{e}"), None),
            (Method::PATCH, format!("/api/v1/users/{e}"), Some(json!({"disabled": false}))),
            (Method::POST, format!("/api/v1/agents/{agent}/execute"), Some(json!({"command": input}))),
            (
                Method::POST,
                format!("/api/v1/agents/{agent}/execute"),
                Some(json!({"command": "restart_service", "params": {"service": input}})),
            ),
            (
                Method::POST,
                format!("/api/v1/agents/{agent}/execute"),
                Some(json!({"command": "tail_log", "params": {"path": input, "lines": 5}})),
            ),
            (
                Method::POST,
                format!("/api/v1/agents/{agent}/execute"),
                Some(json!({"agent_id": input, "command": "ping"})),
            ),
            (Method::POST, "/api/v1/auth/login".to_owned(), Some(json!({"email": input, "password": input}))),
            (
                Method::POST,
                "/api/v1/agents/enroll".to_owned(),
                Some(json!({"token": input, "machine_fingerprint": input, "hostname": input})),
            ),
            (Method::POST, "/api/v1/enrollment-tokens".to_owned(), Some(json!({"name": input}))),
            (
                Method::POST,
                "/api/v1/users".to_owned(),
                Some(json!({"email": input, "password": input, "role": "viewer"})),
            ),
            (Method::PATCH, "/api/v1/incidents/1".to_owned(), Some(json!({"status": input}))),
        ];
        for (method, path, body) in requests {
            let (status, response) = api.call(method.clone(), &path, Some(&api.admin), body).await;
            let is_problem = response.get("type").is_some() || status.is_success();
            if status.is_server_error() || !is_problem {
                failures.push(format!("{method} {} -> {status} {response}", &path[..path.len().min(120)]));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // None of that created anything.
    let users: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&api.stack.db.pool).await.unwrap();
    assert_eq!(users, 3);
    api.stop().await;
}

#[tokio::test]
async fn bodies_are_size_limited_and_must_be_json() {
    let api = start(&[]).await;
    let url = format!("{}/api/v1/auth/login", api.base);
    let big = json!({"email": "a@b.c", "password": "x".repeat(100 * 1024)});
    let response = api.http.post(&url).json(&big).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.headers()["content-type"], "application/problem+json");

    let response = api
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["type"], "urn:opspilot:problem:malformed-json");

    let response =
        api.http.post(&url).header("content-type", "text/plain").body("email=a").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let response = api.http.post(&url).json(&json!({"email": 5})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let (status, body) = api.get("/api/v1/nope", &api.viewer).await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "not-found");
    let (status, body) = api.call(Method::PUT, "/api/v1/agents", Some(&api.viewer), None).await;
    assert_problem(status, &body, StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed");
    api.stop().await;
}

/// A raw connection that has sent a login's head announcing `length` body bytes, and
/// the first of them.
async fn login_with_announced_length(api: &Api, length: u64) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(api.base.trim_start_matches("http://")).await.unwrap();
    let head = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// An ordinary login still gets its answer (401 for a wrong password).
async fn prompt_login_is_answered(api: &Api) {
    let body = json!({"email": "x@example.com", "password": "wrong password!"});
    let (status, _) = api.call(Method::POST, "/api/v1/auth/login", None, Some(body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// A client announcing a body far over the limit gets 413 at once: the gateway does not
/// wait for a body that never comes (it used to, for as long as the client kept the
/// connection open).
#[tokio::test]
async fn an_announced_oversized_body_is_refused_before_it_is_read() {
    use tokio::io::AsyncReadExt;
    let api = start(&[]).await;
    let mut stream = login_with_announced_length(&api, 10_000_000).await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("no answer within 5 s: the gateway is waiting for the body")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("application/problem+json"), "{head}");
    drop(stream);
    // Within the limit, an announced length still works as before.
    prompt_login_is_answered(&api).await;
    api.stop().await;
}

/// A client trickling its body a byte at a time gets 408 once the whole body is late,
/// however steadily the bytes keep coming; a prompt client is unaffected.
#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off_at_the_body_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = start(&["--body-timeout", "1s"]).await;
    let mut stream = login_with_announced_length(&api, 1000).await;
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    // One byte every 200 ms: never idle for long, yet never done.
    let n = loop {
        tokio::select! {
            read = stream.read(&mut buf) => break read.unwrap(),
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                assert!(started.elapsed() < std::time::Duration::from_secs(10), "still reading after 10 s");
                if stream.write_all(b" ").await.is_err() {
                    // The gateway may answer and close between our reads.
                    break stream.read(&mut buf).await.unwrap();
                }
            }
        }
    };
    let waited = started.elapsed();
    // The answer closes the connection: read the rest of it.
    let mut answer = buf[..n].to_vec();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let head = String::from_utf8_lossy(&answer);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    assert!(head.contains("application/problem+json"), "{head}");
    assert!(head.contains("urn:opspilot:problem:body-timeout"), "{head}");
    assert!(waited >= std::time::Duration::from_millis(900), "cut off too early: {waited:?}");
    drop(stream);
    prompt_login_is_answered(&api).await;
    api.stop().await;
}

#[tokio::test]
async fn the_openapi_document_is_complete_and_the_docs_page_is_served() {
    let api = start(&[]).await;
    let (status, doc) = api.call(Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/v1/auth/login",
        "/api/v1/auth/me",
        "/api/v1/agents/enroll",
        "/api/v1/agents",
        "/api/v1/agents/{id}/incidents",
        "/api/v1/agents/{id}/execute",
        "/api/v1/incidents/{id}/analyze",
        "/api/v1/incidents/{id}/execute",
        "/api/v1/audit",
    ] {
        assert!(paths.contains_key(path), "{path} missing from the OpenAPI document");
    }
    // Every operation lists the statuses any operation can answer, and id parameters
    // say what the handlers accept.
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            let Some(responses) = operation["responses"].as_object() else { continue };
            let has_body = operation.get("requestBody").is_some();
            let secured = operation.get("security").is_some_and(|s| !s.as_array().unwrap().is_empty());
            let mut expected = vec!["429", "503"];
            if secured {
                expected.extend(["401", "403"]);
            }
            if has_body {
                expected.extend(["400", "408", "413", "415"]);
            }
            for status in expected {
                let response =
                    responses.get(status).unwrap_or_else(|| panic!("{method} {path} lacks {status}"));
                assert!(
                    response["content"].get("application/problem+json").is_some(),
                    "{method} {path} {status}"
                );
            }
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                // Path parameters are the ones in the path; the rest are query parameters.
                let name = parameter["name"].as_str().unwrap();
                let in_path = path.contains(&format!("{{{name}}}"));
                let place = match name {
                    _ if in_path => "path",
                    // How a reconnecting EventSource says where it was.
                    "Last-Event-ID" => "header",
                    _ => "query",
                };
                assert_eq!(parameter["in"], place, "{method} {path} {name}");
                if path.starts_with("/api/v1/agents/{id}") && parameter["name"] == "id" {
                    assert_eq!(parameter["schema"]["pattern"], "^[0-9a-f]{12}$", "{method} {path}");
                }
                if path.starts_with("/api/v1/incidents/{id}") && parameter["name"] == "id" {
                    assert_eq!(parameter["schema"]["minimum"], 1, "{method} {path}");
                }
                if parameter["name"] == "limit" {
                    assert_eq!(
                        (&parameter["schema"]["minimum"], &parameter["schema"]["maximum"]),
                        (&json!(1), &json!(500)),
                        "{method} {path} {parameter}"
                    );
                }
            }
        }
    }
    // What the document promises is what the API does: a missing token is a 401 problem.
    let (status, body) = api.call(Method::GET, "/api/v1/agents", None, None).await;
    assert_problem(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    let page = api.http.get(format!("{}/api/v1/docs/", api.base)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger"), "the docs page is served offline");
    api.stop().await;
}

#[tokio::test]
async fn create_user_subcommand_and_first_admin_from_the_environment() {
    let stack = test_support::Stack::start().await;
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_api-gateway"));
    let env = vec![("DATABASE_URL", stack.db.url()), ("ADMIN_PASSWORD", PASSWORD.to_owned())];
    let (code, stderr) = test_support::process::run_to_exit(
        bin,
        &env,
        &["create-user", "--email", "ops@example.com", "--role", "operator"],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr:?}");
    let role: String = sqlx::query_scalar("SELECT role FROM users WHERE email = 'ops@example.com'")
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(role, "operator");
    let stored: String =
        sqlx::query_scalar("SELECT password_hash FROM users").fetch_one(&stack.db.pool).await.unwrap();
    assert!(stored.starts_with("$argon2id$"), "{stored}");

    // First admin: only created when there are no users at all.
    let db2 = test_support::TestDb::create().await;
    let js = stack.jetstream().await;
    natsbus::ensure_topology(&js, &stack.topology).await.unwrap();
    let mut args = base_args(&stack);
    args.extend([
        "--database-url-file".into(),
        stack.secret_file("second-database-url", &db2.url()),
        "--admin-email".into(),
        "root@example.com".into(),
        "--admin-password-file".into(),
        stack.secret_file("admin-password", PASSWORD),
    ]);
    let config = test_support::parse_config::<api_gateway::Config>(args);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = api_gateway::start(config, shutdown.clone()).await.unwrap();
    let admins: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE role = 'admin'")
        .fetch_one(&db2.pool)
        .await
        .unwrap();
    assert_eq!(admins, 1);
    shutdown.cancel();
    running.wait().await.unwrap();
}
