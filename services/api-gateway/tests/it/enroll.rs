use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use natsbus::auth::KeyPair;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// A machine as an agent sees it: its fingerprint and the key it holds.
struct Machine {
    fingerprint: String,
    hostname: String,
    key: KeyPair,
}

impl Machine {
    fn new(fingerprint: &str) -> Self {
        Self { fingerprint: fingerprint.into(), hostname: "web-01".into(), key: KeyPair::new_user() }
    }

    /// The same machine with a new key (a reinstall that lost its state, or a clone).
    fn with_new_key(&self) -> Self {
        Self {
            fingerprint: self.fingerprint.clone(),
            hostname: self.hostname.clone(),
            key: KeyPair::new_user(),
        }
    }

    /// Enrolls for its own key, with a token and/or a proof signed by `prover`.
    async fn enroll(&self, api: &Api, token: Option<&str>, prover: Option<&KeyPair>) -> (StatusCode, Value) {
        let mut body = json!({
            "machine_fingerprint": self.fingerprint,
            "hostname": self.hostname,
            "nats_public_key": self.key.public_key(),
        });
        if let Some(token) = token {
            body["token"] = json!(token);
        }
        if let Some(prover) = prover {
            body["proof"] = proof(api, prover, &self.fingerprint, Some(&self.key.public_key())).await;
        }
        api.call(Method::POST, "/api/v1/agents/enroll", None, Some(body)).await
    }

    /// The creds file for what enrollment returned.
    fn creds(&self, enrolled: &Value) -> String {
        natsbus::auth::creds_file(
            enrolled["nats_credentials"]["jwt"].as_str().unwrap(),
            &self.key.seed().unwrap(),
        )
    }
}

/// A fresh challenge, signed by `signer`.
async fn proof(api: &Api, signer: &KeyPair, fingerprint: &str, new_key: Option<&str>) -> Value {
    let (status, challenge) = api.call(Method::POST, "/api/v1/agents/enroll/challenge", None, None).await;
    assert_eq!(status, StatusCode::CREATED, "{challenge}");
    let nonce = challenge["nonce"].as_str().unwrap();
    let message = wire_models::enroll_proof_message(nonce, fingerprint, new_key);
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signer.sign(&message).unwrap());
    json!({"public_key": signer.public_key(), "nonce": nonce, "signature": signature})
}

async fn connect(api: &Api, machine: &Machine, enrolled: &Value) -> Result<async_nats::Client, String> {
    let id = wire_models::AgentId::parse(enrolled["agent_id"].as_str().unwrap()).unwrap();
    async_nats::ConnectOptions::with_credentials(&machine.creds(enrolled))
        .unwrap()
        .name(natsbus::auth::Identity::Agent(id.clone()).name())
        .custom_inbox_prefix(natsbus::auth::Identity::Agent(id).inbox_prefix())
        .connection_timeout(Duration::from_secs(2))
        .connect(api.stack.nats.url())
        .await
        .map_err(|e| e.to_string())
}

async fn conflicts(api: &Api) -> Vec<Value> {
    let (status, page) = api.get("/api/v1/identity-conflicts", &api.admin).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn enrollment_with_tokens_and_re_enrollment_with_proof() {
    let api = start(&[]).await;
    let machine = Machine::new("machine-aaaaaaaa");
    // The development bootstrap token.
    let (status, first) = machine.enroll(&api, Some(BOOTSTRAP), None).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let id = first["agent_id"].as_str().unwrap().to_owned();
    wire_models::AgentId::parse(&id).unwrap();
    assert_eq!(first["subjects"]["rpc"], format!("{}.{id}.rpc", api.stack.topology.subjects.root()));
    assert_eq!(first["subjects"]["heartbeat_bucket"], api.stack.topology.agents_bucket);
    assert_eq!(first["nats_urls"][0], api.stack.nats.url());
    assert_eq!(first["heartbeat_interval_secs"], 10);
    assert_eq!(first["nats_credentials"]["user_public_key"], machine.key.public_key());
    assert!(first["nats_credentials"]["seed"].is_null(), "the agent's own key: no seed comes back");
    // Same machine again, proving its key (no token needed): same id.
    let (status, again) = machine.enroll(&api, None, Some(&machine.key)).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["agent_id"], id);
    assert_eq!(again["status"], "re-enrolled");

    // An admin-created token with one use.
    let (status, created) =
        api.post("/api/v1/enrollment-tokens", &api.admin, json!({"name": "rack 7", "max_uses": 1})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    assert_eq!(created["state"], "active");
    let (status, _) = Machine::new("machine-bbbbbbbb").enroll(&api, Some(&token), None).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = Machine::new("machine-cccccccc").enroll(&api, Some(&token), None).await;
    assert_problem(status, &body, StatusCode::UNAUTHORIZED, "enrollment-refused");
    assert!(body["detail"].as_str().unwrap().contains("no uses left"));
    // Only the hash is stored, and the list shows use counts.
    let stored: String = sqlx::query_scalar("SELECT token_hash FROM enrollment_tokens")
        .fetch_one(&api.stack.db.pool)
        .await
        .unwrap();
    assert_ne!(stored, token);
    let (_, tokens) = api.get("/api/v1/enrollment-tokens", &api.admin).await;
    assert_eq!(tokens[0]["use_count"], 1);
    assert_eq!(tokens[0]["state"], "exhausted");
    assert!(tokens[0].get("token").is_none());

    // Expired.
    let (_, expiring) = api.post("/api/v1/enrollment-tokens", &api.admin, json!({"name": "old"})).await;
    sqlx::query("UPDATE enrollment_tokens SET expires_at = now() - interval '1 minute' WHERE id = $1")
        .bind(uuid::Uuid::parse_str(expiring["id"].as_str().unwrap()).unwrap())
        .execute(&api.stack.db.pool)
        .await
        .unwrap();
    let (status, body) =
        Machine::new("machine-dddddddd").enroll(&api, Some(expiring["token"].as_str().unwrap()), None).await;
    assert_problem(status, &body, StatusCode::UNAUTHORIZED, "enrollment-refused");
    assert!(body["detail"].as_str().unwrap().contains("expired"));

    // Revoked.
    let (_, revoking) = api.post("/api/v1/enrollment-tokens", &api.admin, json!({"name": "gone"})).await;
    let (status, revoked) = api
        .call(
            Method::DELETE,
            &format!("/api/v1/enrollment-tokens/{}", revoking["id"].as_str().unwrap()),
            Some(&api.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(revoked["state"], "revoked");
    let (status, body) =
        Machine::new("machine-eeeeeeee").enroll(&api, Some(revoking["token"].as_str().unwrap()), None).await;
    assert_problem(status, &body, StatusCode::UNAUTHORIZED, "enrollment-refused");
    assert!(body["detail"].as_str().unwrap().contains("revoked"));

    // Unknown.
    let (status, body) =
        Machine::new("machine-ffffffff").enroll(&api, Some("opt_not-a-real-token"), None).await;
    assert_problem(status, &body, StatusCode::UNAUTHORIZED, "enrollment-refused");

    // A revoked agent cannot come back by enrolling again, even with its proof.
    let (status, _) = api.call(Method::DELETE, &format!("/api/v1/agents/{id}"), Some(&api.admin), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = machine.enroll(&api, Some(BOOTSTRAP), Some(&machine.key)).await;
    assert_problem(status, &body, StatusCode::FORBIDDEN, "revoked");
    // Enrollments and the revocation are audit-logged.
    let actions: Vec<String> = api.audit_outcomes(&id).await.into_iter().map(|(action, _)| action).collect();
    assert_eq!(actions, vec!["enroll_agent", "reenroll_agent", "revoke_agent"]);
    let revoked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM agent_credentials WHERE agent_id = $1 AND revoked_at IS NOT NULL",
    )
    .bind(&id)
    .fetch_one(&api.stack.db.pool)
    .await
    .unwrap();
    assert_eq!(revoked, 1, "the one key, issued twice, is revoked");
    api.stop().await;
}

#[tokio::test]
async fn enrollment_input_is_validated() {
    let api = start(&[]).await;
    let key = KeyPair::new_user().public_key();
    let account_key = KeyPair::new_account().public_key();
    for body in [
        json!({"token": BOOTSTRAP, "machine_fingerprint": "short", "hostname": "h"}),
        json!({"token": BOOTSTRAP, "machine_fingerprint": "machine-ok-1234", "hostname": ""}),
        json!({"token": BOOTSTRAP, "machine_fingerprint": "machine-ok-1234", "hostname": "two words"}),
        json!({"token": BOOTSTRAP, "machine_fingerprint": "machine\u{0}-ok-1234", "hostname": "h"}),
        json!({"token": "", "machine_fingerprint": "machine-ok-1234", "hostname": "h"}),
        json!({"token": "x".repeat(300), "machine_fingerprint": "machine-ok-1234", "hostname": "h"}),
        json!({"machine_fingerprint": "machine-ok-1234", "hostname": "h"}),
        json!({"token": BOOTSTRAP, "machine_fingerprint": "machine-ok-1234", "hostname": "h", "nats_public_key": account_key}),
        json!({"token": BOOTSTRAP, "machine_fingerprint": "machine-ok-1234", "hostname": "h", "nats_public_key": "Unot-a-key"}),
        json!({"machine_fingerprint": "machine-ok-1234", "hostname": "h",
               "proof": {"public_key": key, "nonce": "n0nce-n0nce-n0nce", "signature": "c2hvcnQ"}}),
        json!({"machine_fingerprint": "machine-ok-1234", "hostname": "h",
               "proof": {"public_key": key, "nonce": "a b", "signature": "A".repeat(86)}}),
    ] {
        let (status, response) =
            api.call(Method::POST, "/api/v1/agents/enroll", None, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {response}");
    }
    // Nothing was written and no token use spent by any of them.
    let agents: i64 =
        sqlx::query_scalar("SELECT count(*) FROM agents").fetch_one(&api.stack.db.pool).await.unwrap();
    assert_eq!(agents, 0);
    api.stop().await;
}

#[tokio::test]
async fn the_simulated_agents_enroll_and_prove_their_keys_through_the_api() {
    let api = start(&[]).await;
    let fleet = agent_sim::Fleet::numbered("enrolling", 3);
    let dir = tempfile::tempdir().unwrap();
    let keyring = agent_sim::enroll::Keyring::load(dir.path()).unwrap();
    let mut enroller = agent_sim::enroll::Enroller::new(&api.base, BOOTSTRAP, keyring).unwrap();
    let (first, skipped) = enroller.enroll(&fleet).await.unwrap();
    assert_eq!((first.len(), skipped.len()), (3, 0));
    // A restart: the keys come back from the state directory and prove the machines.
    let keyring = agent_sim::enroll::Keyring::load(dir.path()).unwrap();
    let mut restarted = agent_sim::enroll::Enroller::new(&api.base, BOOTSTRAP, keyring).unwrap();
    let (again, skipped) = restarted.enroll(&fleet).await.unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    let ids = |e: &[agent_sim::enroll::Enrolled]| e.iter().map(|a| a.agent.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&first), ids(&again), "re-enrolling gives the same ids");
    // Without the keys the same machines are refused, each one skipped and said why.
    let (none, skipped) =
        agent_sim::enroll::Enroller::new(&api.base, BOOTSTRAP, agent_sim::enroll::Keyring::in_memory())
            .unwrap()
            .enroll(&fleet)
            .await
            .unwrap();
    assert!(none.is_empty());
    assert_eq!(skipped.len(), 3);
    assert!(skipped.iter().all(|s| s.status == 409), "{skipped:?}");
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM agents").fetch_one(&api.stack.db.pool).await.unwrap();
    assert_eq!(count, 3);
    api.stop().await;
}

/// The takeover the proof exists for: a valid token and the victim's fingerprint (not
/// a secret) get an attacker nothing, and the victim keeps its identity.
#[tokio::test]
async fn a_token_and_a_fingerprint_do_not_take_an_agent_over() {
    let api = start(&[]).await;
    let victim = Machine::new("4c4c4544-0042-3510-8051-b7c04f4e3732");
    let (status, enrolled) = victim.enroll(&api, Some(BOOTSTRAP), None).await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    let id = wire_models::AgentId::parse(enrolled["agent_id"].as_str().unwrap()).unwrap();
    let victim_client = connect(&api, &victim, &enrolled).await.unwrap();
    let mut actions = victim_client.subscribe(api.stack.topology.subjects.rpc(&id)).await.unwrap();
    victim_client.flush().await.unwrap();

    // The attacker: a valid token, the fingerprint, a key of its own.
    let (_, created) = api.post("/api/v1/enrollment-tokens", &api.admin, json!({"name": "leaked"})).await;
    let token = created["token"].as_str().unwrap().to_owned();
    let attacker = victim.with_new_key();
    let (status, body) = attacker.enroll(&api, Some(&token), None).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "identity-proof-required");
    assert!(body.get("nats_credentials").is_none() && body.get("agent_id").is_none(), "{body}");
    // Claiming the victim's key with a signature of its own does not verify...
    let mut forged =
        proof(&api, &attacker.key, &attacker.fingerprint, Some(&attacker.key.public_key())).await;
    forged["public_key"] = json!(victim.key.public_key());
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/agents/enroll",
            None,
            Some(json!({"token": token, "machine_fingerprint": attacker.fingerprint, "hostname": "evil",
                        "nats_public_key": attacker.key.public_key(), "proof": forged.clone()})),
        )
        .await;
    assert_problem(status, &body, StatusCode::UNAUTHORIZED, "invalid-proof");
    // ...and a nonce works once: replaying a proof the victim made is refused too.
    let victim_proof = proof(&api, &victim.key, &victim.fingerprint, Some(&victim.key.public_key())).await;
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/agents/enroll",
            None,
            Some(json!({"machine_fingerprint": victim.fingerprint, "hostname": victim.hostname,
                        "nats_public_key": victim.key.public_key(), "proof": victim_proof.clone()})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/agents/enroll",
            None,
            Some(json!({"machine_fingerprint": victim.fingerprint, "hostname": "evil",
                        "nats_public_key": attacker.key.public_key(), "proof": victim_proof})),
        )
        .await;
    assert_problem(status, &body, StatusCode::UNAUTHORIZED, "invalid-proof");

    // The attempt waits for an administrator, with where it came from, and is audited.
    let pending = conflicts(&api).await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["agent_id"], id.as_str());
    assert_eq!(pending[0]["public_key"], attacker.key.public_key());
    assert_eq!(pending[0]["status"], "pending");
    assert_eq!(pending[0]["source_ip"], "127.0.0.1");
    let audit: Vec<(String, String)> = api.audit_outcomes(id.as_str()).await;
    assert!(audit.contains(&("enroll_identity_conflict".into(), "refused".into())), "{audit:?}");

    // The victim still gets its actions.
    let admin = api.stack.client().await;
    let request = admin.request(api.stack.topology.subjects.rpc(&id), "ping".into());
    let (reply, received) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(5), request),
        tokio::time::timeout(Duration::from_secs(5), async {
            let msg = actions.next().await.unwrap();
            victim_client.publish(msg.reply.clone().unwrap(), "pong".into()).await.unwrap();
            msg
        })
    );
    assert_eq!(&received.unwrap().payload[..], b"ping");
    assert_eq!(&reply.unwrap().unwrap().payload[..], b"pong");

    // The real agent rotates to a new key with its proof; its old key stops working.
    let rotated = Machine { key: KeyPair::new_user(), ..Machine::new(&victim.fingerprint) };
    let (status, renewed) = rotated.enroll(&api, None, Some(&victim.key)).await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    assert_eq!(renewed["agent_id"], id.as_str());
    test_support::eventually(Duration::from_secs(10), "the old key's connection to be dropped", || {
        let state = victim_client.connection_state();
        async move { (state != async_nats::connection::State::Connected).then_some(()) }
    })
    .await;
    assert!(connect(&api, &victim, &enrolled).await.is_err(), "the replaced key must not connect again");
    let fresh = connect(&api, &rotated, &renewed).await.unwrap();
    assert_eq!(fresh.connection_state(), async_nats::connection::State::Connected);
    api.stop().await;
}

#[tokio::test]
async fn an_admin_resolves_identity_conflicts() {
    let api = start(&[]).await;
    let original = Machine::new("machine-conflicts-1");
    let (_, first) = original.enroll(&api, Some(BOOTSTRAP), None).await;
    let id = first["agent_id"].as_str().unwrap().to_owned();

    // Reinstalled without its state: an admin approves the move.
    let reinstalled = original.with_new_key();
    let (status, _) = reinstalled.enroll(&api, Some(BOOTSTRAP), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let conflict = conflicts(&api).await[0]["id"].as_i64().unwrap();
    let (status, resolved) = api
        .post(
            &format!("/api/v1/identity-conflicts/{conflict}/resolve"),
            &api.admin,
            json!({"resolution": "move"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(resolved["status"], "moved");
    assert_eq!(resolved["resolved_agent_id"], id);
    let (status, moved) = reinstalled.enroll(&api, None, Some(&reinstalled.key)).await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(moved["agent_id"], id);
    // The old key was revoked at the move, and proves nothing any more.
    let revoked: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT revoked_at FROM agent_credentials WHERE user_public_key = $1")
            .bind(original.key.public_key())
            .fetch_one(&api.stack.db.pool)
            .await
            .unwrap();
    assert!(revoked.is_some());
    let (status, _) = original.enroll(&api, None, Some(&original.key)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no token, no proof on record: refused");
    // Resolving twice is a conflict.
    let (status, body) = api
        .post(
            &format!("/api/v1/identity-conflicts/{conflict}/resolve"),
            &api.admin,
            json!({"resolution": "split"}),
        )
        .await;
    assert_problem(status, &body, StatusCode::CONFLICT, "conflict");

    // A cloned image: split into an agent of its own.
    let clone = original.with_new_key();
    let (status, _) = clone.enroll(&api, Some(BOOTSTRAP), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let pending: Vec<Value> =
        conflicts(&api).await.into_iter().filter(|c| c["status"] == "pending").collect();
    let split = pending[0]["id"].as_i64().unwrap();
    let (status, resolved) = api
        .post(
            &format!("/api/v1/identity-conflicts/{split}/resolve"),
            &api.admin,
            json!({"resolution": "split"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    let (status, cloned) = clone.enroll(&api, None, Some(&clone.key)).await;
    assert_eq!(status, StatusCode::OK, "{cloned}");
    assert_eq!(cloned["agent_id"], resolved["resolved_agent_id"]);
    assert_ne!(cloned["agent_id"], id);
    // Both agents keep working with their own proofs.
    assert_eq!(reinstalled.enroll(&api, None, Some(&reinstalled.key)).await.1["agent_id"], id);

    // Rejected for good.
    let intruder = original.with_new_key();
    intruder.enroll(&api, Some(BOOTSTRAP), None).await;
    let pending: Vec<Value> =
        conflicts(&api).await.into_iter().filter(|c| c["status"] == "pending").collect();
    let reject = pending[0]["id"].as_i64().unwrap();
    let (status, _) = api
        .post(
            &format!("/api/v1/identity-conflicts/{reject}/resolve"),
            &api.admin,
            json!({"resolution": "reject"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = intruder.enroll(&api, Some(BOOTSTRAP), None).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "identity-proof-required");
    assert!(body["detail"].as_str().unwrap().contains("rejected"), "{body}");
    // Only admins see or resolve conflicts, and every resolution is audited.
    assert_eq!(api.get("/api/v1/identity-conflicts", &api.operator).await.0, StatusCode::FORBIDDEN);
    let (_, audit) = api.get("/api/v1/audit", &api.admin).await;
    let resolutions = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "resolve_identity_conflict")
        .count();
    assert_eq!(resolutions, 3);
    api.stop().await;
}

#[tokio::test]
async fn a_public_key_belongs_to_one_agent() {
    let api = start(&[]).await;
    let first = Machine::new("machine-key-owner");
    assert_eq!(first.enroll(&api, Some(BOOTSTRAP), None).await.0, StatusCode::CREATED);
    let copycat = Machine {
        key: KeyPair::from_seed(&first.key.seed().unwrap()).unwrap(),
        ..Machine::new("machine-copycat")
    };
    let (status, body) = copycat.enroll(&api, Some(BOOTSTRAP), None).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "key-in-use");
    api.stop().await;
}

#[tokio::test]
async fn a_revoked_agent_can_be_deleted_and_its_machine_enrolls_again() {
    let api = start(&[]).await;
    let machine = Machine::new("machine-comes-back");
    let (_, first) = machine.enroll(&api, Some(BOOTSTRAP), None).await;
    let id = first["agent_id"].as_str().unwrap().to_owned();
    api.incident(&id, "oom", "killed").await;
    // Only a revoked agent can be deleted.
    let (status, body) =
        api.call(Method::DELETE, &format!("/api/v1/revoked-agents/{id}"), Some(&api.admin), None).await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "not-found");
    api.call(Method::DELETE, &format!("/api/v1/agents/{id}"), Some(&api.admin), None).await;
    let (status, _) =
        api.call(Method::DELETE, &format!("/api/v1/revoked-agents/{id}"), Some(&api.operator), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Keeping its history: the record stays, revoked; the machine is free.
    let (status, body) = api
        .call(Method::DELETE, &format!("/api/v1/revoked-agents/{id}?history=keep"), Some(&api.admin), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let again = machine.with_new_key();
    let (status, second) = again.enroll(&api, Some(BOOTSTRAP), None).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_ne!(second["agent_id"], id.as_str());
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM incidents WHERE agent_id = $1")
        .bind(&id)
        .fetch_one(&api.stack.db.pool)
        .await
        .unwrap();
    assert_eq!(kept, 1);
    // Purging: the record and its history go; its revoked key stays revoked.
    let second_id = second["agent_id"].as_str().unwrap().to_owned();
    api.incident(&second_id, "oom", "killed").await;
    api.call(Method::DELETE, &format!("/api/v1/agents/{second_id}"), Some(&api.admin), None).await;
    let (status, _) = api
        .call(
            Method::DELETE,
            &format!("/api/v1/revoked-agents/{second_id}?history=purge"),
            Some(&api.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (rows, incidents): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM agents WHERE id = $1), (SELECT count(*) FROM incidents WHERE agent_id = $1)",
    )
    .bind(&second_id)
    .fetch_one(&api.stack.db.pool)
    .await
    .unwrap();
    assert_eq!((rows, incidents), (0, 0));
    let still_revoked: bool =
        sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM agent_credentials WHERE user_public_key = $1")
            .bind(again.key.public_key())
            .fetch_one(&api.stack.db.pool)
            .await
            .unwrap();
    assert!(still_revoked);
    let (status, _) = api
        .call(Method::DELETE, &format!("/api/v1/revoked-agents/{id}?history=later"), Some(&api.admin), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, audit) = api.get("/api/v1/audit", &api.admin).await;
    let deletes = audit["items"].as_array().unwrap().iter().filter(|e| e["action"] == "delete_agent").count();
    assert_eq!(deletes, 3, "the refused one, keep and purge");
    api.stop().await;
}
