//! The exact accounting each scenario ends with, the way Kafka's replication tests
//! check "every acked message was consumed": the load's ledger on one side, Postgres
//! and the dead-letter stream on the other, compared event id by event id.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, pull};
use futures::StreamExt;
use uuid::Uuid;

use crate::load::{Expect, Ledger, Outcome};

/// One scenario's numbers and verdict.
#[derive(Debug, Clone, Default)]
pub struct Accounting {
    pub scenario: String,
    /// Distinct events the load published.
    pub published: u64,
    /// Publish acks, JetStream-reported duplicates excluded.
    pub acked: u64,
    /// Retries JetStream recognised as duplicates (the first ack was lost in a fault):
    /// stored once, acknowledged on the retry.
    pub retried: u64,
    /// Never acknowledged (the load gave up).
    pub unacked: u64,
    /// Rows in `ingested_events`.
    pub stored: u64,
    /// Sum of the occurrences of event incidents (`agent_offline` ones excluded).
    pub occurrences: u64,
    /// Messages in the dead-letter stream.
    pub dead_lettered: u64,
    /// Acknowledged events found neither stored nor dead-lettered.
    pub lost: u64,
    /// Events counted more than once (stored twice, stored and dead-lettered,
    /// dead-lettered twice, or an occurrence too many).
    pub duplicates: u64,
    /// Stored or dead-lettered events that went to the wrong place or that nobody sent.
    pub misplaced: u64,
    /// Event incidents in Postgres with no incident-created message on the stream.
    pub unannounced: u64,
    pub elapsed: Duration,
    /// What the scenario did (faults injected, bounds measured).
    pub notes: Vec<String>,
    /// Every check that failed.
    pub failures: Vec<String>,
}

impl Accounting {
    pub fn pass(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn fail(&mut self, failure: impl Into<String>) {
        self.failures.push(failure.into());
    }

    /// Records `check`, failing with `what` when it does not hold.
    pub fn check(&mut self, check: bool, what: impl Into<String>) {
        if !check {
            self.fail(what);
        }
    }

    /// A scenario that could not run to its accounting.
    pub fn aborted(scenario: &str, error: &anyhow::Error, elapsed: Duration) -> Self {
        Self {
            scenario: scenario.to_owned(),
            elapsed,
            failures: vec![format!("aborted: {error:#}")],
            ..Self::default()
        }
    }
}

/// What Postgres and the dead-letter stream hold at the end.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub stored_ids: Vec<Uuid>,
    pub occurrences: u64,
    /// Event ids of the dead-lettered messages (None when the payload has none).
    pub dead_letter_ids: Vec<Option<Uuid>>,
    /// Ids of the incidents events opened (`agent_offline` ones excluded).
    pub incident_ids: Vec<i64>,
    /// Incident ids announced on the incidents stream.
    pub announced_ids: Vec<i64>,
}

impl Observed {
    /// Reads the ledger of stored events, the incident counts, the dead letters and the
    /// incident announcements.
    pub async fn read(
        pool: &sqlx::PgPool,
        js: &async_nats::jetstream::Context,
        dlq_stream: &str,
        incidents_stream: &str,
    ) -> anyhow::Result<Self> {
        let stored_ids: Vec<Uuid> =
            sqlx::query_scalar("SELECT event_id FROM ingested_events").fetch_all(pool).await?;
        let occurrences: i64 = sqlx::query_scalar(
            "SELECT COALESCE(sum(occurrences), 0)::bigint FROM incidents WHERE type <> $1",
        )
        .bind(storage::incidents::OFFLINE_INCIDENT_TYPE)
        .fetch_one(pool)
        .await?;
        let dead_letter_ids = read_dead_letter_ids(js, dlq_stream).await?;
        let incident_ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM incidents WHERE type <> $1")
            .bind(storage::incidents::OFFLINE_INCIDENT_TYPE)
            .fetch_all(pool)
            .await?;
        let announced_ids = read_all(js, incidents_stream, |msg| {
            wire_models::decode::<wire_models::IncidentCreated>(&msg.payload).ok().map(|m| m.incident_id)
        })
        .await?
        .into_iter()
        .flatten()
        .collect();
        Ok(Self {
            stored_ids,
            occurrences: u64::try_from(occurrences).unwrap_or(0),
            dead_letter_ids,
            incident_ids,
            announced_ids,
        })
    }
}

/// The event ids of every message in the dead-letter stream.
pub async fn read_dead_letter_ids(
    js: &async_nats::jetstream::Context,
    dlq_stream: &str,
) -> anyhow::Result<Vec<Option<Uuid>>> {
    #[derive(serde::Deserialize)]
    struct WithId {
        event_id: Uuid,
    }
    read_all(js, dlq_stream, |msg| serde_json::from_slice::<WithId>(&msg.payload).ok().map(|w| w.event_id))
        .await
}

/// Every message of a stream, each through `read`.
pub(crate) async fn read_all<T>(
    js: &async_nats::jetstream::Context,
    stream_name: &str,
    read: impl Fn(&async_nats::jetstream::Message) -> T,
) -> anyhow::Result<Vec<T>> {
    let mut stream = js.get_stream(stream_name).await?;
    let total = stream.info().await?.state.messages;
    // No acks: an explicit-ack consumer stops after `max_ack_pending` (1,000) unacked.
    let consumer =
        stream.create_consumer(pull::Config { ack_policy: AckPolicy::None, ..Default::default() }).await?;
    let mut out = Vec::new();
    let deadline = Instant::now() + FETCH_RETRIES_FOR;
    while (out.len() as u64) < total {
        let before = out.len();
        match fetch_into(&consumer, &read, &mut out).await {
            Ok(()) => anyhow::ensure!(out.len() > before, "{stream_name} stopped delivering"),
            // Just after a node of a cluster rejoined, a fetch can reach a node that does
            // not know the new consumer's interest yet (503, no responders). Nothing is
            // acknowledged, so what was delivered stays delivered and the next fetch goes
            // on from there.
            Err(err) if Instant::now() < deadline => {
                tracing::debug!(stream = stream_name, error = %err, "fetch failed; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(err) => anyhow::bail!("reading {stream_name}: {err}"),
        }
    }
    Ok(out)
}

/// How long [`read_all`] retries fetches that fail.
const FETCH_RETRIES_FOR: Duration = Duration::from_secs(30);

/// One fetch of up to 1,000 messages, each through `read` into `out`.
async fn fetch_into<T>(
    consumer: &async_nats::jetstream::consumer::Consumer<pull::Config>,
    read: &impl Fn(&async_nats::jetstream::Message) -> T,
    out: &mut Vec<T>,
) -> Result<(), async_nats::Error> {
    let mut batch = consumer.fetch().max_messages(1000).expires(Duration::from_secs(1)).messages().await?;
    while let Some(msg) = batch.next().await {
        out.push(read(&msg?));
    }
    Ok(())
}

/// Compares the ledger with what was observed.
pub fn reconcile(scenario: &str, ledger: &Ledger, observed: &Observed) -> Accounting {
    let mut a =
        Accounting { scenario: scenario.to_owned(), elapsed: ledger.elapsed, ..Accounting::default() };
    a.published = ledger.entries.len() as u64;
    a.acked = ledger.count(|e| matches!(e.outcome, Outcome::Acked { .. }));
    a.retried = ledger.count(|e| matches!(e.outcome, Outcome::RetriedDuplicate { .. }));
    a.unacked = ledger.count(|e| e.outcome == Outcome::Unacked);
    let first_dups = ledger.count(|e| e.outcome == Outcome::FirstAttemptDuplicate);
    a.stored = observed.stored_ids.len() as u64;
    a.occurrences = observed.occurrences;
    a.dead_lettered = observed.dead_letter_ids.len() as u64;

    let stored: HashSet<Uuid> = observed.stored_ids.iter().copied().collect();
    let mut dead: HashSet<Uuid> = HashSet::new();
    let mut dead_twice = 0u64;
    for id in observed.dead_letter_ids.iter().flatten() {
        if !dead.insert(*id) {
            dead_twice += 1;
        }
    }
    let sent: HashSet<Uuid> = ledger.entries.iter().map(|e| e.id).collect();
    for entry in &ledger.entries {
        let (in_store, in_dlq) = (stored.contains(&entry.id), dead.contains(&entry.id));
        let accepted = matches!(entry.outcome, Outcome::Acked { .. } | Outcome::RetriedDuplicate { .. });
        if in_store && in_dlq {
            a.duplicates += 1;
        }
        match entry.expect {
            Expect::Stored if in_dlq && !in_store => a.misplaced += 1,
            Expect::DeadLettered if in_store => a.misplaced += 1,
            _ => {}
        }
        if accepted && !in_store && !in_dlq {
            a.lost += 1;
        }
    }
    a.duplicates += dead_twice + a.occurrences.saturating_sub(a.stored);
    a.misplaced += stored.iter().filter(|id| !sent.contains(id)).count() as u64;
    a.misplaced += dead.iter().filter(|id| !sent.contains(id)).count() as u64;
    a.misplaced += observed.dead_letter_ids.iter().filter(|id| id.is_none()).count() as u64;
    let announced: HashSet<i64> = observed.announced_ids.iter().copied().collect();
    a.unannounced = observed.incident_ids.iter().filter(|id| !announced.contains(id)).count() as u64;

    let expected_dead = ledger.count(|e| {
        e.expect == Expect::DeadLettered
            && matches!(e.outcome, Outcome::Acked { .. } | Outcome::RetriedDuplicate { .. })
    });
    a.check(a.unacked == 0, format!("{} events were never acknowledged by JetStream", a.unacked));
    a.check(first_dups == 0, format!("{first_dups} first publishes were reported as duplicates"));
    a.check(
        a.acked + a.retried == a.stored + a.dead_lettered,
        format!(
            "acknowledged ({} + {} retried) != stored ({}) + dead-lettered ({})",
            a.acked, a.retried, a.stored, a.dead_lettered
        ),
    );
    a.check(
        a.occurrences == a.stored,
        format!("incident occurrences ({}) != stored events ({})", a.occurrences, a.stored),
    );
    a.check(
        a.dead_lettered == expected_dead,
        format!("dead-lettered {} != poison sent {expected_dead}", a.dead_lettered),
    );
    a.check(a.lost == 0, format!("{} acknowledged events lost", a.lost));
    a.check(a.duplicates == 0, format!("{} events counted twice", a.duplicates));
    a.check(a.misplaced == 0, format!("{} events misplaced or unknown", a.misplaced));
    a.check(a.unannounced == 0, format!("{} incidents never announced to the analyzer", a.unannounced));
    a
}

/// The accounting table, one row per scenario, then each scenario's notes and failures.
pub fn table(rows: &[Accounting]) -> String {
    let mut out = String::new();
    let header = [
        "scenario",
        "published",
        "acked",
        "retried",
        "unacked",
        "stored",
        "occurrences",
        "dead-lettered",
        "lost",
        "duplicates",
        "unannounced",
        "time",
        "result",
    ];
    let cells: Vec<[String; 13]> = rows
        .iter()
        .map(|r| {
            [
                r.scenario.clone(),
                r.published.to_string(),
                r.acked.to_string(),
                r.retried.to_string(),
                r.unacked.to_string(),
                r.stored.to_string(),
                r.occurrences.to_string(),
                r.dead_lettered.to_string(),
                r.lost.to_string(),
                r.duplicates.to_string(),
                r.unannounced.to_string(),
                format!("{:.1}s", r.elapsed.as_secs_f64()),
                if r.pass() { "PASS".to_owned() } else { "FAIL".to_owned() },
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |out: &mut String, row: &[String]| {
        let mut text = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(text, "| {cell:<w$} ");
            } else {
                let _ = write!(text, "| {cell:>w$} ");
            }
        }
        let _ = writeln!(out, "{text}|");
    };
    line(&mut out, &header.map(str::to_owned));
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut out, &rule);
    for row in &cells {
        line(&mut out, row);
    }
    for r in rows {
        if r.notes.is_empty() && r.failures.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{}:", r.scenario);
        for note in &r.notes {
            let _ = writeln!(out, "  - {note}");
        }
        for failure in &r.failures {
            let _ = writeln!(out, "  FAIL {failure}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Entry;

    fn entry(expect: Expect, outcome: Outcome) -> Entry {
        Entry { id: Uuid::now_v7(), expect, outcome }
    }

    #[test]
    fn a_clean_run_passes_and_every_kind_of_mismatch_fails() {
        let good = entry(Expect::Stored, Outcome::Acked { attempts: 1 });
        let retried = entry(Expect::Stored, Outcome::RetriedDuplicate { attempts: 3 });
        let poison = entry(Expect::DeadLettered, Outcome::Acked { attempts: 1 });
        let ledger = Ledger { entries: vec![good, retried, poison], elapsed: Duration::from_secs(1) };
        let clean = Observed {
            stored_ids: vec![good.id, retried.id],
            occurrences: 2,
            dead_letter_ids: vec![Some(poison.id)],
            incident_ids: vec![1, 2],
            announced_ids: vec![2, 1, 2],
        };
        let a = reconcile("clean", &ledger, &clean);
        assert!(a.pass(), "{:?}", a.failures);
        assert_eq!((a.published, a.acked, a.retried, a.stored, a.dead_lettered), (3, 2, 1, 2, 1));

        let lost = Observed { stored_ids: vec![good.id], occurrences: 1, ..clean.clone() };
        let a = reconcile("lost", &ledger, &lost);
        assert_eq!(a.lost, 1);
        assert!(!a.pass());

        let counted_twice = Observed { occurrences: 3, ..clean.clone() };
        assert_eq!(reconcile("twice", &ledger, &counted_twice).duplicates, 1);

        let both = Observed { dead_letter_ids: vec![Some(poison.id), Some(good.id)], ..clean.clone() };
        let a = reconcile("both", &ledger, &both);
        assert_eq!(a.duplicates, 1);
        assert!(!a.pass());

        let unannounced = Observed { announced_ids: vec![2], ..clean };
        let a = reconcile("unannounced", &ledger, &unannounced);
        assert_eq!(a.unannounced, 1);
        assert!(!a.pass());
    }

    #[test]
    fn the_table_has_one_row_per_scenario_and_lists_failures() {
        let mut a = Accounting {
            scenario: "kill".into(),
            published: 10,
            acked: 10,
            stored: 10,
            ..Accounting::default()
        };
        a.note("3 SIGKILLs");
        let mut b = Accounting { scenario: "nats".into(), ..Accounting::default() };
        b.fail("something");
        let text = table(&[a, b]);
        assert!(text.contains("| kill "), "{text}");
        assert!(text.contains("PASS") && text.contains("FAIL"), "{text}");
        assert!(text.contains("3 SIGKILLs") && text.contains("FAIL something"), "{text}");
    }
}
