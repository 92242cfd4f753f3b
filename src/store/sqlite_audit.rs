//! The audit insert on SQLite, which has no arrays to bind a batch as one
//! statement: multi-row VALUES in cached shapes, one transaction per chunk.

use super::audit_event::{AUDIT_COLUMNS, AuditEvent};
use crate::error::AuthzError;

/// The most rows one SQLite insert carries (19 binds each, far below
/// SQLite's limit); also one write turn, so a login's session insert waits
/// for at most this many rows.
const CHUNK: usize = 512;

/// Columns of `audit_log`, as bound per row below: counted from
/// `AUDIT_COLUMNS`, so the two cannot drift apart.
const COLUMNS: usize = {
    let (names, mut commas, mut i) = (AUDIT_COLUMNS.as_bytes(), 0, 0);
    while i < names.len() {
        if names[i] == b',' {
            commas += 1;
        }
        i += 1;
    }
    commas + 1
};

/// One bound value of a row.
enum Value<'a> {
    Text(&'a str),
    Int(i64),
}

/// The insert for `rows` rows, a power of two up to the chunk. A chunk is
/// written as pieces of these ten shapes (its length in binary), so each
/// statement's text is built once and its prepared form reused from sqlx's
/// statement cache: a statement per length was parsed again for almost
/// every batch.
fn statement(rows: usize) -> &'static str {
    static STATEMENTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let statements = STATEMENTS.get_or_init(|| {
        let row = format!("({})", vec!["?"; COLUMNS].join(", "));
        (0..=CHUNK.trailing_zeros())
            .map(|power| {
                format!(
                    "INSERT INTO audit_log ({}) VALUES {} ON CONFLICT (id) DO NOTHING",
                    AUDIT_COLUMNS,
                    vec![row.as_str(); 1 << power].join(", ")
                )
            })
            .collect()
    });
    &statements[rows.trailing_zeros() as usize]
}

/// Splits `chunk` into pieces whose lengths are powers of two, largest
/// first.
fn pieces(mut chunk: &[AuditEvent]) -> impl Iterator<Item = &[AuditEvent]> {
    std::iter::from_fn(move || {
        let len = chunk.len();
        if len == 0 {
            return None;
        }
        let (piece, rest) = chunk.split_at(1 << len.ilog2());
        chunk = rest;
        Some(piece)
    })
}

/// One piece's binds, in `AUDIT_COLUMNS` order. Text equal to the row
/// before's in the same column (the constants of a decision, an empty
/// field, one subject's burst) shares that row's copy.
fn binds(piece: &[AuditEvent]) -> Result<sqlx::sqlite::SqliteArguments, AuthzError> {
    use sqlx::Arguments;
    use std::sync::Arc;
    let mut args = sqlx::sqlite::SqliteArguments::default();
    args.reserve(piece.len() * COLUMNS, 0);
    let mut before: [Option<Arc<str>>; COLUMNS] = Default::default();
    for e in piece {
        let id = e.id.to_string();
        let row: [Value<'_>; COLUMNS] = [
            Value::Text(&id),
            Value::Int(e.at_ms),
            Value::Text(&e.kind),
            Value::Text(&e.subject),
            Value::Text(&e.action),
            Value::Text(&e.resource_type),
            Value::Text(&e.resource_id),
            Value::Text(&e.decision),
            Value::Text(&e.layer),
            Value::Text(&e.reason),
            Value::Text(&e.message),
            Value::Text(&e.cache_tier),
            Value::Int(e.latency_us),
            Value::Text(&e.request_id),
            Value::Text(&e.client_ip),
            Value::Text(&e.session_id),
            Value::Text(&e.flags),
            Value::Text(&e.user_agent),
            Value::Text(&e.trace_id),
        ];
        for (value, before) in row.into_iter().zip(&mut before) {
            let bound = match value {
                Value::Int(n) => args.add(n),
                Value::Text(text) => args.add(match before {
                    Some(same) if **same == *text => same.clone(),
                    _ => before.insert(Arc::from(text)).clone(),
                }),
            };
            bound.map_err(|e| AuthzError::Internal(format!("cannot bind an audit event: {e}")))?;
        }
    }
    Ok(args)
}

/// SQLite (no arrays): multi-row VALUES. Each chunk is one transaction in
/// its own write turn, written as pieces of cached statements.
pub(crate) async fn insert_audit_sqlite(
    store: &super::SqliteStore,
    events: &[AuditEvent],
) -> Result<u64, AuthzError> {
    let mut written = 0;
    for chunk in events.chunks(CHUNK) {
        let pieces = pieces(chunk)
            .map(|piece| Ok((statement(piece.len()), binds(piece)?)))
            .collect::<Result<Vec<_>, AuthzError>>()?;
        let _turn = store.write_turn().await;
        let mut tx = store.pool().begin().await?;
        for (statement, args) in pieces {
            written += sqlx::query_with(statement, args)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_written_in_pieces_of_cached_shapes() {
        let events = vec![AuditEvent::default(); CHUNK];
        for len in [1, 2, 3, 100, 511, 512] {
            let pieces: Vec<usize> = pieces(&events[..len]).map(<[_]>::len).collect();
            assert_eq!(pieces.iter().sum::<usize>(), len, "{len}: every event once");
            assert!(pieces.windows(2).all(|w| w[0] > w[1]), "{len}: {pieces:?}");
            for rows in pieces {
                let statement = statement(rows);
                assert_eq!(statement.matches('?').count(), rows * COLUMNS);
            }
        }
        assert_eq!(COLUMNS, 19);
    }
}
