use chrono::{DateTime, Duration, Utc};
use storage::presence::{self as p, Transition, TransitionOptions};
use test_support::TestDb;
use wire_models::{AgentId, PresenceState};

async fn agents(db: &TestDb, n: usize) -> Vec<AgentId> {
    let agents: Vec<(AgentId, String)> = (0..n).map(|i| (AgentId::random(), format!("host-{i}"))).collect();
    storage::agents::register_many(&db.pool, &agents).await.unwrap();
    let mut ids: Vec<AgentId> = agents.into_iter().map(|(id, _)| id).collect();
    ids.sort();
    ids
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}

fn transition(agent: &AgentId, changed_at: DateTime<Utc>, reason: &str) -> Transition {
    Transition {
        agent_id: agent.clone(),
        changed_at,
        last_seen_at: Some(changed_at - Duration::seconds(30)),
        threshold_secs: 30,
        reason: reason.into(),
    }
}

async fn count(db: &TestDb, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

#[tokio::test]
async fn concurrent_callers_make_each_transition_exactly_once() {
    test_support::init_tracing();
    let db = TestDb::create().await;
    let ids = agents(&db, 200).await;
    let (a, b) = (db.new_pool().await, db.new_pool().await);
    let options = TransitionOptions::default();

    for (round, state) in
        [PresenceState::Online, PresenceState::Offline, PresenceState::Online].into_iter().enumerate()
    {
        let t: Vec<Transition> =
            ids.iter().map(|id| transition(id, at(round as i64 * 100), "heartbeat")).collect();
        // The same batch from two replicas at once, one in reverse order.
        let mut reversed = t.clone();
        reversed.reverse();
        let (ra, rb) = tokio::join!(
            p::apply_transitions(&a, state, &t, options),
            p::apply_transitions(&b, state, &reversed, options)
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(ra.applied.len() + rb.applied.len(), 200, "round {round}");
        assert_eq!(ra.unchanged.len() + rb.unchanged.len(), 200, "the other caller sees them unchanged");
        assert!(ra.unchanged.iter().chain(&rb.unchanged).all(|s| s.state == state));
    }
    assert_eq!(count(&db, "SELECT count(*) FROM presence_transitions").await, 600);
    assert_eq!(count(&db, "SELECT count(*) FROM agents WHERE status = 'online'").await, 200);
    // Each agent's offline opened one critical incident; coming back resolved it.
    assert_eq!(count(&db, "SELECT count(*) FROM incidents WHERE type = 'agent_offline'").await, 200);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM incidents WHERE status = 'resolved' AND resolved_by = 'presence-tracker'
             AND is_critical AND severity = 'critical' AND resolved_at IS NOT NULL"
        )
        .await,
        200
    );
}

#[tokio::test]
async fn going_offline_opens_one_incident_and_coming_back_resolves_it() {
    let db = TestDb::create().await;
    let ids = agents(&db, 1).await;
    let agent = &ids[0];
    let options = TransitionOptions::default();
    p::apply_transitions(&db.pool, PresenceState::Online, &[transition(agent, at(0), "heartbeat")], options)
        .await
        .unwrap();
    let off = p::apply_transitions(
        &db.pool,
        PresenceState::Offline,
        &[transition(agent, at(60), "timeout")],
        options,
    )
    .await
    .unwrap();
    let applied = &off.applied[0];
    assert_eq!(applied.state, PresenceState::Offline);
    assert_eq!(applied.changed_at, at(60));
    assert_eq!(applied.threshold_secs, 30);
    let incident_id = applied.incident_id.expect("an incident was opened");
    let (kind, status, dedup_key, fingerprint, critical): (String, String, String, String, bool) =
        sqlx::query_as(
            "SELECT type, status, dedup_key, fingerprint, is_critical FROM incidents WHERE id = $1",
        )
        .bind(incident_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((kind.as_str(), status.as_str(), critical), ("agent_offline", "new", true));
    assert_eq!(dedup_key, storage::incidents::offline_dedup_key(agent));
    assert_eq!(fingerprint, storage::incidents::offline_fingerprint(agent));

    let on = p::apply_transitions(
        &db.pool,
        PresenceState::Online,
        &[transition(agent, at(90), "heartbeat")],
        options,
    )
    .await
    .unwrap();
    assert_eq!(on.applied[0].incident_id, Some(incident_id));
    let (status, resolved_at): (String, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT status, resolved_at FROM incidents WHERE id = $1")
            .bind(incident_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), resolved_at), ("resolved", Some(at(90))));

    // Switched off: no incident, and the next return resolves nothing.
    let off = TransitionOptions { offline_incidents: false };
    let down =
        p::apply_transitions(&db.pool, PresenceState::Offline, &[transition(agent, at(200), "timeout")], off)
            .await
            .unwrap();
    assert_eq!(down.applied[0].incident_id, None);
    assert_eq!(count(&db, "SELECT count(*) FROM incidents").await, 1);
}

#[tokio::test]
async fn status_changed_at_never_moves_back_and_missing_agents_are_reported() {
    let db = TestDb::create().await;
    let ids = agents(&db, 1).await;
    let options = TransitionOptions::default();
    // Agents start offline (no transition yet): going offline changes nothing.
    let out = p::apply_transitions(
        &db.pool,
        PresenceState::Offline,
        &[transition(&ids[0], at(0), "timeout")],
        options,
    )
    .await
    .unwrap();
    assert!(out.applied.is_empty());
    assert_eq!(out.unchanged[0].since, None);
    p::apply_transitions(
        &db.pool,
        PresenceState::Online,
        &[transition(&ids[0], at(50), "heartbeat")],
        options,
    )
    .await
    .unwrap();
    p::apply_transitions(
        &db.pool,
        PresenceState::Offline,
        &[transition(&ids[0], at(100), "timeout")],
        options,
    )
    .await
    .unwrap();
    // A heartbeat processed late carries an earlier time than the offline decision.
    let stranger = AgentId::parse("0badc0ffee00").unwrap();
    let out = p::apply_transitions(
        &db.pool,
        PresenceState::Online,
        &[transition(&ids[0], at(90), "heartbeat"), transition(&stranger, at(90), "heartbeat")],
        options,
    )
    .await
    .unwrap();
    assert_eq!(out.applied[0].changed_at, at(100));
    assert_eq!(out.missing, vec![stranger]);
    let history = p::history(&db.pool, &ids[0], None, 10).await.unwrap();
    assert!(history[0].changed_at >= history[1].changed_at);
}

#[tokio::test]
async fn last_seen_only_moves_forward_and_rewrites_nothing_twice() {
    let db = TestDb::create().await;
    let ids = agents(&db, 3).await;
    let seen: Vec<(AgentId, DateTime<Utc>)> = ids.iter().map(|id| (id.clone(), at(10))).collect();
    assert_eq!(p::flush_last_seen(&db.pool, &seen).await.unwrap(), 3);
    // The same flush from a second replica writes nothing.
    assert_eq!(p::flush_last_seen(&db.pool, &seen).await.unwrap(), 0);
    // Older times never win; duplicates in one flush take the newest.
    let mixed = vec![(ids[0].clone(), at(5)), (ids[1].clone(), at(20)), (ids[1].clone(), at(15))];
    assert_eq!(p::flush_last_seen(&db.pool, &mixed).await.unwrap(), 1);
    let current = p::current(&db.pool, &ids).await.unwrap();
    let by_id = |id: &AgentId| current.iter().find(|c| &c.agent_id == id).unwrap().last_seen_at;
    assert_eq!(by_id(&ids[0]), Some(at(10)));
    assert_eq!(by_id(&ids[1]), Some(at(20)));
    assert_eq!(current[0].state, PresenceState::Offline);
    assert_eq!(current[0].since, None);
}

#[tokio::test]
async fn history_pages_newest_first_with_how_long_each_state_lasted() {
    let db = TestDb::create().await;
    let ids = agents(&db, 2).await;
    let options = TransitionOptions { offline_incidents: false };
    for i in 0..5 {
        let state = if i % 2 == 0 { PresenceState::Online } else { PresenceState::Offline };
        for id in &ids {
            p::apply_transitions(&db.pool, state, &[transition(id, at(i * 60), "heartbeat")], options)
                .await
                .unwrap();
        }
    }
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = p::history(&db.pool, &ids[0], before, 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        before = page.last().map(|r| r.id);
        pages.push(page);
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
    let rows: Vec<_> = pages.into_iter().flatten().collect();
    assert!(rows.iter().all(|r| r.agent_id == ids[0]));
    assert_eq!(
        rows.iter().map(|r| r.changed_at).collect::<Vec<_>>(),
        vec![at(240), at(180), at(120), at(60), at(0)]
    );
    assert_eq!(rows[0].until, None, "the current state has not ended");
    assert_eq!(rows[1].until, Some(at(240)));
    assert_eq!(rows[4].until, Some(at(60)));
    assert_eq!(rows[1].state, PresenceState::Offline);

    let current = p::current(&db.pool, &ids[..1]).await.unwrap();
    assert_eq!(current[0].state, PresenceState::Online);
    assert_eq!(current[0].since, Some(at(240)));
    assert_eq!(current[0].threshold_secs, Some(30));

    let online = p::online_agents(&db.pool, None, 1).await.unwrap();
    assert_eq!(online, vec![ids[0].clone()]);
    assert_eq!(p::online_agents(&db.pool, Some(&ids[0]), 10).await.unwrap(), vec![ids[1].clone()]);
}

#[tokio::test]
async fn the_batch_statements_are_planned_for_each_call_never_from_a_cached_generic_plan() {
    let db = TestDb::create().await;
    let ids = agents(&db, 20).await;
    // One connection, so the statements it prepared can be listed afterwards.
    let pool = storage::connect_with(db.options(), 1, std::time::Duration::from_secs(10)).await.unwrap();
    // More calls than Postgres needs (five) before it would switch a prepared statement
    // to its generic plan, which guesses one row per array and joins the batch with
    // itself by nested loop: quadratic in the batch size.
    for round in 0..8 {
        let state = if round % 2 == 0 { PresenceState::Online } else { PresenceState::Offline };
        let batch: Vec<Transition> =
            ids.iter().map(|id| transition(id, at(round * 60), "heartbeat")).collect();
        let outcome = p::apply_transitions(&pool, state, &batch, TransitionOptions::default()).await.unwrap();
        assert_eq!(outcome.applied.len(), ids.len());
        let seen: Vec<(AgentId, DateTime<Utc>)> =
            ids.iter().map(|id| (id.clone(), at(round * 60 + 30))).collect();
        p::flush_last_seen(&pool, &seen).await.unwrap();
    }
    // The agents' own lookup is cached as usual: the listing below sees this connection.
    p::current(&pool, &ids).await.unwrap();
    let cached: Vec<String> =
        sqlx::query_scalar("SELECT statement FROM pg_prepared_statements").fetch_all(&pool).await.unwrap();
    assert!(cached.iter().any(|s| s.contains("LEFT JOIN LATERAL")), "{cached:#?}");
    let batch_statements: Vec<&String> = cached
        .iter()
        .filter(|s| s.contains("INSERT INTO presence_transitions") || s.contains("AS t(id, seen)"))
        .collect();
    assert!(batch_statements.is_empty(), "prepared and cached: {batch_statements:#?}");
}
