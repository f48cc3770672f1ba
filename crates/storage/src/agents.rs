//! Agents: enrollment, the known-agent check, inventory bookkeeping, presence mirror.

use sqlx::PgPool;
use wire_models::AgentId;

use crate::StorageError;

/// Which of `ids` are enrolled and not revoked.
pub async fn enrolled(pool: &PgPool, ids: &[&AgentId]) -> Result<Vec<AgentId>, StorageError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
    let found: Vec<String> =
        sqlx::query_scalar("SELECT id FROM agents WHERE id = ANY($1::text[]) AND revoked_at IS NULL")
            .bind(&ids)
            .fetch_all(pool)
            .await?;
    Ok(found.into_iter().filter_map(|id| AgentId::parse(&id).ok()).collect())
}

/// Registers an agent directly (tests, benchmarks, the simulator's fixtures); real
/// agents arrive through enrollment.
pub async fn register(pool: &PgPool, id: &AgentId, hostname: &str) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO agents (id, hostname, enrolled_at) VALUES ($1, $2, now())
         ON CONFLICT (id) DO UPDATE SET revoked_at = NULL",
    )
    .bind(id.as_str())
    .bind(hostname)
    .execute(pool)
    .await?;
    Ok(())
}

/// Registers many agents in one statement.
pub async fn register_many(pool: &PgPool, agents: &[(AgentId, String)]) -> Result<(), StorageError> {
    for chunk in agents.chunks(10_000) {
        let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
        let hosts: Vec<&str> = chunk.iter().map(|(_, h)| h.as_str()).collect();
        sqlx::query(
            "INSERT INTO agents (id, hostname, enrolled_at)
             SELECT id, hostname, now() FROM UNNEST($1::text[], $2::text[]) AS t(id, hostname)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&hosts)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// An agent as the API shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentRow {
    pub id: String,
    pub hostname: String,
    pub status: String,
    pub last_seen_at: Option<chrono::DateTime<chrono::Utc>>,
    pub status_changed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub meta: serde_json::Value,
    /// Labels operators set.
    pub labels: serde_json::Value,
    /// The agent's labels: its inventory's, overridden by the operators'.
    pub effective_labels: serde_json::Value,
    pub enrolled_at: Option<chrono::DateTime<chrono::Utc>>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
    pub inventory_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

const AGENT_COLUMNS: &str = "id, hostname, status, last_seen_at, status_changed_at, meta, labels, effective_labels, \
    enrolled_at, revoked_at, inventory_at, created_at";

/// Filters of the agent list.
#[derive(Debug, Clone, Default)]
pub struct AgentFilter<'a> {
    pub status: Option<&'a str>,
    pub hostname_prefix: Option<&'a str>,
    /// Agents whose labels meet every requirement.
    pub selector: Option<&'a wire_models::LabelSelector>,
    /// Keyset cursor: the last id of the previous page.
    pub after: Option<&'a str>,
    pub limit: i64,
    pub include_revoked: bool,
}

/// `{key: value}` as JSON, for a containment test (`@>`) the labels index answers.
fn label(key: &str, value: &str) -> serde_json::Value {
    serde_json::json!({ key: value })
}

/// The selector as SQL on `effective_labels`, every value bound. `!=` and `notin` match
/// an agent without the key, as in Kubernetes.
fn push_selector(qb: &mut sqlx::QueryBuilder<sqlx::Postgres>, selector: &wire_models::LabelSelector) {
    use wire_models::Requirement;
    for requirement in &selector.requirements {
        qb.push(" AND ");
        match requirement {
            Requirement::Equals(k, v) => {
                qb.push("effective_labels @> ").push_bind(label(k, v));
            }
            Requirement::NotEquals(k, v) => {
                qb.push("NOT effective_labels @> ").push_bind(label(k, v));
            }
            Requirement::In(k, values) | Requirement::NotIn(k, values) => {
                if matches!(requirement, Requirement::NotIn(..)) {
                    qb.push("NOT ");
                }
                // One containment per value, so each is an index lookup.
                qb.push("(");
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        qb.push(" OR ");
                    }
                    qb.push("effective_labels @> ").push_bind(label(k, v));
                }
                qb.push(")");
            }
            Requirement::Exists(k) => {
                qb.push("effective_labels ? ").push_bind(k.clone());
            }
            Requirement::DoesNotExist(k) => {
                qb.push("NOT effective_labels ? ").push_bind(k.clone());
            }
        }
    }
}

/// `AND hostname LIKE '{prefix}%'`, with LIKE metacharacters in the prefix escaped: a
/// prefix is a prefix, not a pattern.
fn push_hostname_prefix(qb: &mut sqlx::QueryBuilder<sqlx::Postgres>, prefix: &str) {
    let escaped = prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    qb.push(" AND hostname LIKE ").push_bind(format!("{escaped}%"));
}

/// Agents ordered by id (keyset pagination).
pub async fn list(pool: &PgPool, filter: &AgentFilter<'_>) -> Result<Vec<AgentRow>, StorageError> {
    let mut qb = sqlx::QueryBuilder::new(format!("SELECT {AGENT_COLUMNS} FROM agents WHERE TRUE"));
    if let Some(status) = filter.status {
        qb.push(" AND status = ").push_bind(status.to_owned());
    }
    if let Some(prefix) = filter.hostname_prefix {
        push_hostname_prefix(&mut qb, prefix);
    }
    if let Some(selector) = filter.selector {
        push_selector(&mut qb, selector);
    }
    if let Some(after) = filter.after {
        qb.push(" AND id > ").push_bind(after.to_owned());
    }
    if !filter.include_revoked {
        qb.push(" AND revoked_at IS NULL");
    }
    qb.push(" ORDER BY id LIMIT ").push_bind(filter.limit);
    Ok(qb.build_query_as().fetch_all(pool).await?)
}

/// Which agents an action goes to.
#[derive(Debug, Clone, Copy)]
pub enum Targeting<'a> {
    Ids(&'a [String]),
    Selector(&'a wire_models::LabelSelector),
    HostnamePrefix(&'a str),
}

/// A live agent an action may be sent to, with its presence as Postgres mirrors it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Reachable {
    pub id: String,
    pub hostname: String,
    pub online: bool,
}

/// The live (not revoked) agents `targeting` names, by id, at most `limit`.
pub async fn resolve(
    pool: &PgPool,
    targeting: Targeting<'_>,
    limit: i64,
) -> Result<Vec<Reachable>, StorageError> {
    let mut qb = sqlx::QueryBuilder::new(
        "SELECT id, hostname, status = 'online' AS online FROM agents WHERE revoked_at IS NULL",
    );
    match targeting {
        Targeting::Ids(ids) => {
            qb.push(" AND id = ANY(").push_bind(ids.to_vec()).push(")");
        }
        Targeting::Selector(selector) => push_selector(&mut qb, selector),
        Targeting::HostnamePrefix(prefix) => push_hostname_prefix(&mut qb, prefix),
    }
    qb.push(" ORDER BY id LIMIT ").push_bind(limit);
    Ok(qb.build_query_as().fetch_all(pool).await?)
}

/// What [`set_labels`] did.
#[derive(Debug)]
pub enum LabelsSet {
    /// The agent as it is now.
    Done(Box<AgentRow>),
    /// No such live agent.
    NotFound,
    /// The agent would carry more than the bound of operator labels: nothing changed.
    TooMany,
}

/// Merges `changes` into the labels operators set on an agent: a value sets the label,
/// `None` removes it, and the agent keeps at most `max` of them. The caller checked
/// keys and values.
pub async fn set_labels(
    pool: &PgPool,
    id: &AgentId,
    changes: &std::collections::BTreeMap<String, Option<String>>,
    max: usize,
) -> Result<LabelsSet, StorageError> {
    let set: serde_json::Map<String, serde_json::Value> = changes
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), serde_json::Value::String(v.clone()))))
        .collect();
    let removed: Vec<&str> = changes.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| k.as_str()).collect();
    // The bound is checked on the merged labels in the same statement, so concurrent
    // changes cannot add up past it.
    let row: Option<AgentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE agents SET labels = (labels - $2::text[]) || $3, updated_at = now()
         WHERE id = $1 AND revoked_at IS NULL
           AND (SELECT count(*) FROM jsonb_object_keys((labels - $2::text[]) || $3)) <= $4
         RETURNING {AGENT_COLUMNS}"
    )))
    .bind(id.as_str())
    .bind(&removed)
    .bind(serde_json::Value::Object(set))
    .bind(i64::try_from(max).unwrap_or(i64::MAX))
    .fetch_optional(pool)
    .await?;
    if let Some(row) = row {
        return Ok(LabelsSet::Done(Box::new(row)));
    }
    let live: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM agents WHERE id = $1 AND revoked_at IS NULL)")
            .bind(id.as_str())
            .fetch_one(pool)
            .await?;
    Ok(if live { LabelsSet::TooMany } else { LabelsSet::NotFound })
}

pub async fn get(pool: &PgPool, id: &AgentId) -> Result<Option<AgentRow>, StorageError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1")))
        .bind(id.as_str())
        .fetch_optional(pool)
        .await?)
}

/// Revokes an agent (it stays in the database, refused everywhere). Returns whether
/// it existed and was not already revoked.
pub async fn revoke(pool: &PgPool, id: &AgentId) -> Result<bool, StorageError> {
    let result = sqlx::query(
        "UPDATE agents SET revoked_at = now(), status = 'offline', status_changed_at = now(), updated_at = now()
         WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id.as_str())
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// An enrollment as the gateway checked it: every field validated, the proof (when
/// there is one) verified against the key it names.
#[derive(Debug, Clone)]
pub struct EnrollmentRequest<'a> {
    /// The id a new agent gets.
    pub candidate: &'a AgentId,
    /// SHA-256 of the machine fingerprint.
    pub fingerprint_hash: &'a str,
    pub hostname: &'a str,
    /// SHA-256 of the enrollment token; `None` when the caller already checked a
    /// bootstrap token from the environment, or none was sent.
    pub token_hash: Option<&'a str>,
    /// Whether a bootstrap token was accepted (counts as a valid token).
    pub bootstrap: bool,
    /// The key whose possession the request proved (a signature over a fresh nonce).
    pub proven_key: Option<&'a str>,
    /// The key the new credentials are for (what becomes the key on record). `None`
    /// only without bus security, where no credentials are issued.
    pub new_key: Option<&'a str>,
    /// Where the request came from (kept with an identity conflict).
    pub source_ip: &'a str,
}

/// How an enrollment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrollment {
    /// A new agent.
    New(AgentId),
    /// An agent that proved its identity; `replaced_keys` are its other credentials,
    /// revoked in the same transaction.
    Existing { id: AgentId, replaced_keys: Vec<String> },
    /// The agent was revoked; it cannot come back through enrollment.
    Revoked(AgentId),
    /// The token was refused.
    TokenRefused(crate::tokens::TokenRefusal),
    /// The machine's fingerprint is enrolled and the request did not prove it holds
    /// that agent's key. With a key in the request the attempt is kept as an identity
    /// conflict for an administrator (`conflict` = its id and whether it was rejected).
    ProofRequired { agent: AgentId, conflict: Option<(i64, bool)> },
    /// The key is already another agent's.
    KeyInUse,
}

fn parse_id(id: &str) -> Result<AgentId, StorageError> {
    AgentId::parse(id).map_err(|e| StorageError::Conflict(e.to_string()))
}

/// Enrolls a machine. One transaction, serialised per fingerprint: a refused
/// enrollment uses no token, and two enrollments of one new machine racing get the
/// same agent id.
pub async fn enroll(pool: &PgPool, req: &EnrollmentRequest<'_>) -> Result<Enrollment, StorageError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7162))")
        .bind(req.fingerprint_hash)
        .execute(&mut *tx)
        .await?;

    // Proof first: the key identifies the agent, whatever fingerprint it reports now.
    if let Some(proven) = req.proven_key {
        let owner: Option<(String, Option<chrono::DateTime<chrono::Utc>>)> =
            sqlx::query_as("SELECT id, revoked_at FROM agents WHERE identity_key = $1 FOR UPDATE")
                .bind(proven)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some((id, revoked_at)) = owner {
            let id = parse_id(&id)?;
            if revoked_at.is_some() {
                return Ok(Enrollment::Revoked(id));
            }
            if let Some(new_key) = req.new_key
                && key_owner(&mut tx, new_key).await?.is_some_and(|owner| owner != id.as_str())
            {
                return Ok(Enrollment::KeyInUse);
            }
            sqlx::query(
                "UPDATE agents SET hostname = $2, machine_fingerprint = $3, identity_key = COALESCE($4, identity_key),
                        enrolled_at = now(), updated_at = now()
                 WHERE id = $1",
            )
            .bind(id.as_str())
            .bind(req.hostname)
            .bind(req.fingerprint_hash)
            .bind(req.new_key)
            .execute(&mut *tx)
            .await?;
            let replaced = crate::credentials::revoke_others(&mut tx, &id, req.new_key).await?;
            tx.commit().await?;
            return Ok(Enrollment::Existing { id, replaced_keys: replaced });
        }
    }

    type Candidate = (String, Option<chrono::DateTime<chrono::Utc>>, Option<String>);
    let candidates: Vec<Candidate> = sqlx::query_as(
        "SELECT id, revoked_at, identity_key FROM agents WHERE machine_fingerprint = $1 ORDER BY created_at FOR UPDATE",
    )
    .bind(req.fingerprint_hash)
    .fetch_all(&mut *tx)
    .await?;
    let live: Vec<&Candidate> = candidates.iter().filter(|(_, revoked, _)| revoked.is_none()).collect();
    if live.is_empty()
        && let Some((id, ..)) = candidates.first()
    {
        return Ok(Enrollment::Revoked(parse_id(id)?));
    }

    if !req.bootstrap {
        let check = match req.token_hash {
            Some(hash) if live.is_empty() => crate::tokens::consume(&mut tx, hash).await?.map(|_| ()),
            // A conflict is recorded only for a valid token, but uses none of it.
            Some(hash) => crate::tokens::check(&mut tx, hash).await?,
            None => Err(crate::tokens::TokenRefusal::Unknown),
        };
        if let Err(refusal) = check {
            return Ok(Enrollment::TokenRefused(refusal));
        }
    }

    if let Some((id, _, key_on_record)) = live.first() {
        let id = parse_id(id)?;
        if key_on_record.is_none() && live.len() == 1 {
            // Enrolled while bus security was off: there is no key to prove, the token
            // is the only credential there ever was.
            sqlx::query(
                "UPDATE agents SET hostname = $2, identity_key = $3, enrolled_at = now(), updated_at = now()
                 WHERE id = $1",
            )
            .bind(id.as_str())
            .bind(req.hostname)
            .bind(req.new_key)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Enrollment::Existing { id, replaced_keys: Vec::new() });
        }
        let conflict = match req.new_key {
            Some(key) => Some(crate::conflicts::record(&mut tx, &id, req, key).await?),
            None => None,
        };
        tx.commit().await?;
        return Ok(Enrollment::ProofRequired { agent: id, conflict });
    }

    if let Some(new_key) = req.new_key
        && key_owner(&mut tx, new_key).await?.is_some()
    {
        return Ok(Enrollment::KeyInUse);
    }
    sqlx::query(
        "INSERT INTO agents (id, hostname, machine_fingerprint, identity_key, enrolled_at)
         VALUES ($1, $2, $3, $4, now())",
    )
    .bind(req.candidate.as_str())
    .bind(req.hostname)
    .bind(req.fingerprint_hash)
    .bind(req.new_key)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Enrollment::New(req.candidate.clone()))
}

/// Which agent a public key belongs to: the key on record, or any credential ever
/// issued (a revoked key is nobody's to take).
async fn key_owner(conn: &mut sqlx::PgConnection, key: &str) -> Result<Option<String>, StorageError> {
    let owner: Option<Option<String>> = sqlx::query_scalar(
        "SELECT id FROM agents WHERE identity_key = $1
         UNION ALL
         SELECT COALESCE(agent_id, '') FROM agent_credentials WHERE user_public_key = $1
         LIMIT 1",
    )
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(owner.map(Option::unwrap_or_default))
}

/// Removes a revoked agent so its machine can enroll again: with `purge` its history
/// (incidents, inventory, presence) goes too; without, the record stays, revoked, and
/// only the machine's fingerprint and key are released. Returns `false` when there is
/// no such revoked agent. Its revoked credentials stay on the revocation list.
pub async fn delete_revoked(pool: &PgPool, id: &AgentId, purge: bool) -> Result<bool, StorageError> {
    let statement = if purge {
        "DELETE FROM agents WHERE id = $1 AND revoked_at IS NOT NULL"
    } else {
        "UPDATE agents SET machine_fingerprint = NULL, identity_key = NULL, updated_at = now()
         WHERE id = $1 AND revoked_at IS NOT NULL"
    };
    Ok(sqlx::query(statement).bind(id.as_str()).execute(pool).await?.rows_affected() == 1)
}
