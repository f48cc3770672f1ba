//! The fleet-wide incident list against a reference: every filter, each pair of them,
//! both sorts, paging, and the counts.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use storage::incidents::IncidentStatus;
use storage::incidents::fleet::{self, FleetCursor, FleetFilter, FleetSort};
use test_support::TestDb;
use wire_models::{AgentId, EventKind, Severity};

/// What the reference filters on, read straight from the tables.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Truth {
    id: i64,
    agent_id: String,
    hostname: String,
    revoked: bool,
    status: String,
    severity: String,
    is_critical: bool,
    kind: String,
    source: String,
    raw_error: String,
    created_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
}

async fn truth(db: &TestDb) -> Vec<Truth> {
    sqlx::query_as(
        "SELECT i.id, i.agent_id, a.hostname, a.revoked_at IS NOT NULL AS revoked, i.status, i.severity,
                i.is_critical, i.type AS kind, i.source, i.raw_error, i.created_at, i.last_seen_at
         FROM incidents i JOIN agents a ON a.id = i.agent_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

fn keeps(t: &Truth, f: &FleetFilter, sort: FleetSort) -> bool {
    let time = match sort {
        FleetSort::Created => t.created_at,
        FleetSort::LastSeen => t.last_seen_at,
    };
    let text = format!("{} {}", t.source, t.raw_error).to_lowercase();
    !t.revoked
        && (f.statuses.is_empty() || f.statuses.iter().any(|s| s.as_str() == t.status))
        && (f.severities.is_empty() || f.severities.iter().any(|s| s.as_str() == t.severity))
        && f.critical.is_none_or(|c| c == t.is_critical)
        && f.kind.as_ref().is_none_or(|k| *k == t.kind)
        && f.agent_id.as_ref().is_none_or(|a| a.as_str() == t.agent_id)
        && f.hostname_prefix.as_ref().is_none_or(|p| t.hostname.starts_with(p.as_str()))
        && f.since.is_none_or(|s| time >= s)
        && f.until.is_none_or(|u| time < u)
        && f.text.as_ref().is_none_or(|q| text.contains(&q.to_lowercase()))
}

fn expected(all: &[Truth], f: &FleetFilter, sort: FleetSort) -> Vec<i64> {
    let mut kept: Vec<&Truth> = all.iter().filter(|t| keeps(t, f, sort)).collect();
    match sort {
        FleetSort::Created => kept.sort_by_key(|t| std::cmp::Reverse(t.id)),
        FleetSort::LastSeen => kept.sort_by_key(|t| std::cmp::Reverse((t.last_seen_at, t.id))),
    }
    kept.into_iter().map(|t| t.id).collect()
}

/// Every page, following the cursors.
async fn all_pages(db: &TestDb, f: &FleetFilter, sort: FleetSort, limit: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut cursor = None;
    loop {
        let page = fleet::list(&db.pool, f, sort, cursor, limit).await.unwrap();
        assert!(page.items.len() as i64 <= limit);
        ids.extend(page.items.iter().map(|i| i.incident.id));
        match page.next {
            Some(next) => {
                // What a client sends back is the encoded cursor.
                cursor = Some(FleetCursor::parse(&next.encode(), sort).unwrap());
            }
            None => return ids,
        }
    }
}

async fn agent(db: &TestDb, hostname: &str) -> AgentId {
    let id = AgentId::random();
    storage::agents::register(&db.pool, &id, hostname).await.unwrap();
    id
}

async fn incident(
    db: &TestDb,
    agent: &AgentId,
    kind: &str,
    severity: Severity,
    source: &str,
    raw_error: &str,
    age_minutes: i64,
) -> i64 {
    let event_id = uuid::Uuid::now_v7();
    let event = storage::incidents::NewEvent {
        event_id,
        agent_id: agent.clone(),
        kind: EventKind::parse(kind).unwrap(),
        severity,
        source: source.into(),
        raw_error: raw_error.into(),
        context: json!({}),
        occurred_at: Utc::now() - Duration::minutes(age_minutes),
        fingerprint: format!("fp-{event_id}"),
        dedup_key: event_id.to_string(),
    };
    let id = storage::incidents::ingest_events(&db.pool, &[event]).await.unwrap().created[0].id;
    // Creation times spread out like last occurrences, in the other order, so the two
    // sorts differ.
    sqlx::query("UPDATE incidents SET created_at = now() - make_interval(mins => $2::int) WHERE id = $1")
        .bind(id)
        .bind(i32::try_from(100 - age_minutes).unwrap())
        .execute(&db.pool)
        .await
        .unwrap();
    id
}

async fn set_status(db: &TestDb, id: i64, status: &str) {
    sqlx::query("UPDATE incidents SET status = $2 WHERE id = $1")
        .bind(id)
        .bind(status)
        .execute(&db.pool)
        .await
        .unwrap();
}

/// A small fleet with every kind of difference the filters look at.
async fn seed(db: &TestDb) -> (AgentId, AgentId) {
    let web1 = agent(db, "web-01").await;
    let web2 = agent(db, "web-02").await;
    let db1 = agent(db, "db-01").await;
    let odd = agent(db, "web_%x").await;
    let gone = agent(db, "web-99").await;
    let kinds = ["service_down", "oom", "disk_full", "cert_expiring"];
    let severities = [Severity::Critical, Severity::Error, Severity::Warning, Severity::Info];
    let sources = ["nginx", "kernel", "postgres", "certbot"];
    let statuses = ["new", "analyzed", "acknowledged", "resolved"];
    let mut n = 0i64;
    for (a, host) in [(&web1, "web1"), (&web2, "web2"), (&db1, "db1"), (&odd, "odd"), (&gone, "gone")] {
        for k in 0..6 {
            n += 1;
            let kind = kinds[(n as usize + k) % kinds.len()];
            let severity = severities[(n as usize * 3 + k) % severities.len()];
            let source = sources[(n as usize + 2 * k) % sources.len()];
            let error = format!("{source} on {host}: Error #{n} 50%_done TIMEOUT waiting");
            let id = incident(db, a, kind, severity, source, &error, (n * 7) % 90).await;
            set_status(db, id, statuses[(n as usize + k) % statuses.len()]).await;
        }
    }
    storage::agents::revoke(&db.pool, &gone).await.unwrap();
    (web1, db1)
}

#[tokio::test]
async fn every_filter_and_every_pair_match_the_reference_in_both_sorts() {
    test_support::init_tracing();
    let db = TestDb::create().await;
    let (web1, db1) = seed(&db).await;
    let all = truth(&db).await;
    let mid = Utc::now() - Duration::minutes(45);
    let singles: Vec<(&str, FleetFilter)> = vec![
        ("none", FleetFilter::default()),
        ("status", FleetFilter { statuses: vec![IncidentStatus::New], ..Default::default() }),
        (
            "statuses",
            FleetFilter {
                statuses: vec![IncidentStatus::New, IncidentStatus::Acknowledged],
                ..Default::default()
            },
        ),
        ("severity", FleetFilter { severities: vec![Severity::Critical], ..Default::default() }),
        (
            "severities",
            FleetFilter { severities: vec![Severity::Warning, Severity::Info], ..Default::default() },
        ),
        ("critical", FleetFilter { critical: Some(true), ..Default::default() }),
        ("not critical", FleetFilter { critical: Some(false), ..Default::default() }),
        ("kind", FleetFilter { kind: Some("oom".into()), ..Default::default() }),
        ("agent", FleetFilter { agent_id: Some(web1.clone()), ..Default::default() }),
        ("other agent", FleetFilter { agent_id: Some(db1.clone()), ..Default::default() }),
        ("prefix", FleetFilter { hostname_prefix: Some("web-".into()), ..Default::default() }),
        // `_` and `%` are characters, not wildcards.
        ("literal prefix", FleetFilter { hostname_prefix: Some("web_%".into()), ..Default::default() }),
        ("since", FleetFilter { since: Some(mid), ..Default::default() }),
        ("until", FleetFilter { until: Some(mid), ..Default::default() }),
        ("text", FleetFilter { text: Some("timeout".into()), ..Default::default() }),
        ("text in source", FleetFilter { text: Some("POSTGRES".into()), ..Default::default() }),
        ("literal text", FleetFilter { text: Some("50%_d".into()), ..Default::default() }),
        ("rare text", FleetFilter { text: Some("Error #7 ".into()), ..Default::default() }),
    ];
    let mut filters = singles.clone();
    for (i, (a, fa)) in singles.iter().enumerate().skip(1) {
        for (b, fb) in singles.iter().skip(i + 1) {
            let mut both = fa.clone();
            merge(&mut both, fb);
            filters.push((Box::leak(format!("{a} + {b}").into_boxed_str()), both));
        }
    }
    let paired = filters.len();
    // A prefix no agent has, and one only the revoked agent has: both keep nothing.
    let nobody = [("unknown prefix", "zz-"), ("revoked prefix", "web-9")];
    for (name, prefix) in nobody {
        filters.push((name, FleetFilter { hostname_prefix: Some(prefix.into()), ..Default::default() }));
    }
    let mut non_empty = 0;
    for (name, filter) in &filters {
        for sort in [FleetSort::Created, FleetSort::LastSeen] {
            let want = expected(&all, filter, sort);
            non_empty += usize::from(!want.is_empty());
            assert_eq!(all_pages(&db, filter, sort, 4).await, want, "{name} {sort:?}");
            if sort == FleetSort::Created {
                let summary = fleet::summary(&db.pool, filter).await.unwrap();
                assert_eq!(summary.total, want.len() as i64, "{name}: total");
                let kept: Vec<&Truth> = all.iter().filter(|t| keeps(t, filter, sort)).collect();
                for status in IncidentStatus::ALL {
                    let n = kept.iter().filter(|t| t.status == status.as_str()).count() as i64;
                    assert_eq!(summary.by_status[status.as_str()], n, "{name}: {status}");
                }
                let critical = kept.iter().filter(|t| t.is_critical).count() as i64;
                assert_eq!(summary.critical, critical, "{name}: critical");
            }
        }
    }
    // The reference is not vacuous: most filters keep something, and the revoked
    // agent's incidents exist but are never shown.
    assert!(non_empty > paired, "{non_empty} of {}", paired * 2);
    for (name, _) in nobody {
        let (_, filter) = filters.iter().find(|(n, _)| *n == name).unwrap();
        assert!(expected(&all, filter, FleetSort::Created).is_empty(), "{name} keeps nothing");
    }
    assert!(all.iter().any(|t| t.revoked));
}

/// Narrows `into` by `other`'s fields too.
fn merge(into: &mut FleetFilter, other: &FleetFilter) {
    into.statuses.extend(other.statuses.iter().copied());
    into.severities.extend(other.severities.iter().copied());
    into.critical = into.critical.or(other.critical);
    into.kind = into.kind.clone().or_else(|| other.kind.clone());
    into.agent_id = into.agent_id.clone().or_else(|| other.agent_id.clone());
    into.hostname_prefix = into.hostname_prefix.clone().or_else(|| other.hostname_prefix.clone());
    into.since = into.since.or(other.since);
    into.until = into.until.or(other.until);
    into.text = into.text.clone().or_else(|| other.text.clone());
}

#[tokio::test]
async fn paging_while_incidents_arrive_has_no_gaps_or_repeats() {
    test_support::init_tracing();
    let db = TestDb::create().await;
    let (web1, _) = seed(&db).await;
    let filter = FleetFilter::default();
    let before = expected(&truth(&db).await, &filter, FleetSort::Created);
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut arrivals = Vec::new();
    loop {
        let page = fleet::list(&db.pool, &filter, FleetSort::Created, cursor, 3).await.unwrap();
        seen.extend(page.items.iter().map(|i| i.incident.id));
        // New incidents land between every two pages.
        arrivals.push(incident(&db, &web1, "oom", Severity::Critical, "kernel", "Out of memory", 0).await);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, before, "every incident that existed, once, newest first");
    // The first page now starts with what arrived.
    let first = fleet::list(&db.pool, &filter, FleetSort::Created, None, 3).await.unwrap();
    let newest: Vec<i64> = arrivals.iter().rev().take(3).copied().collect();
    assert_eq!(first.items.iter().map(|i| i.incident.id).collect::<Vec<_>>(), newest);
}

#[tokio::test]
async fn a_page_carries_the_hostname_and_the_whole_incident() {
    test_support::init_tracing();
    let db = TestDb::create().await;
    let web = agent(&db, "web-77").await;
    let id =
        incident(&db, &web, "service_down", Severity::Critical, "nginx", "nginx.service failed", 1).await;
    let page = fleet::list(&db.pool, &FleetFilter::default(), FleetSort::Created, None, 10).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert!(page.next.is_none());
    let item = &page.items[0];
    assert_eq!(item.hostname, "web-77");
    assert_eq!(item.incident.id, id);
    assert_eq!(item.incident.agent_id, web.as_str());
    assert_eq!(item.incident.severity, Severity::Critical);
    assert!(item.incident.is_critical);
    assert_eq!(item.incident.raw_error, "nginx.service failed");
}
