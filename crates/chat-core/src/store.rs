//! The PostgreSQL log.
//!
//! [`Store::insert_batch`] is the only write path. It stores a batch atomically:
//! 1. optimistically assuming no id of the batch is stored yet, in **one statement** (one round
//!    trip, its own transaction): advance each channel's `last_seq` by the batch's count (an
//!    upsert that creates new channels and locks the rows in name order, so two workers never
//!    deadlock and the second waits for the first's commit), number the messages from the old
//!    `last_seq` in batch order, insert them (a multi-row `unnest` insert). The unique `id` index
//!    is the check: a stored id fails the statement, which then changed nothing;
//! 2. only then (a redelivery), in a transaction: lock the channels (`for update`, name order),
//!    look the batch's ids up, insert the others with the next seqs and advance `last_seq`, so
//!    redelivered records keep their stored row and seq.
//!
//! When PostgreSQL refuses a batch, [`Refusal::of`] tells a refusal of the content (retrying
//! cannot help: find the record and dead-letter it) from everything else (retry).
//!
//! History reads are index range scans on the `(channel, seq)` primary key.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use uuid::Uuid;

use crate::channel::ChannelName;
use crate::message::{db_time, MessageId, NewMessage, StoredMessage};

/// Migrations, embedded at build time from `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

const COLUMNS: &str = "channel, seq, id, author, text, sent_at, stored_at, user_id";

/// What happened to one record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored now, with a new seq.
    Inserted(StoredMessage),
    /// Already stored (a redelivery, or a repeat of an id within the batch); this is the stored
    /// row, with its original seq.
    Duplicate(StoredMessage),
    /// The id is already stored (or earlier in the batch) for a message with another channel,
    /// author or text; this is that message. Nothing was stored for this record.
    Conflict(StoredMessage),
}

impl Outcome {
    pub fn message(&self) -> &StoredMessage {
        match self {
            Outcome::Inserted(m) | Outcome::Duplicate(m) | Outcome::Conflict(m) => m,
        }
    }

    pub fn into_message(self) -> StoredMessage {
        match self {
            Outcome::Inserted(m) | Outcome::Duplicate(m) | Outcome::Conflict(m) => m,
        }
    }
}

/// PostgreSQL refused a write for its *content*: a data exception (SQLSTATE class 22), an
/// integrity violation (class 23) other than the id dedup and the `(channel, seq)` key, or a
/// program limit (class 54). The same rows would be refused again, so the caller isolates the
/// offending record instead of retrying. Every other error (connection and availability,
/// deadlocks, credentials, a missing table or privilege, anything unclassified) is not a
/// refusal: a configuration or migration fault must be retried, never dead-letter the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The five-character SQLSTATE, e.g. `22021`.
    pub sqlstate: String,
    /// PostgreSQL's message.
    pub message: String,
}

impl Refusal {
    /// Classifies by SQLSTATE, never by message text.
    pub fn of(err: &sqlx::Error) -> Option<Self> {
        let sqlx::Error::Database(db) = err else {
            return None;
        };
        let sqlstate = db.code()?;
        let content = match &sqlstate[..sqlstate.len().min(2)] {
            "22" | "54" => true,
            "23" => !is_duplicate_id(err) && !is_broken_seq_invariant(err),
            _ => false,
        };
        content.then(|| Self {
            sqlstate: sqlstate.into_owned(),
            message: db.message().to_owned(),
        })
    }
}

/// A violation of the `(channel, seq)` primary key: two writers assigned the same seq, which the
/// channel row lock rules out. Not bad content but a broken invariant: retried, and worth an
/// operator's attention.
pub fn is_broken_seq_invariant(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.constraint() == Some("messages_pkey"))
}

/// Handle to the log.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects lazily: the pool opens connections on first use, so a service starts (and
    /// reports not-ready) while PostgreSQL is down.
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Self, sqlx::Error> {
        Ok(Self::connect_lazy_with(url.parse()?, max_connections))
    }

    /// [`Store::connect_lazy`] with options built by the caller (TLS files, …).
    pub fn connect_lazy_with(options: PgConnectOptions, max_connections: u32) -> Self {
        let options = options.log_statements(tracing::log::LevelFilter::Debug);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(3))
            .connect_lazy_with(options);
        Self { pool }
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// Cheap reachability check for readiness probes.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("select 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Stores a batch atomically. The result is aligned with the input: one [`Outcome`] per
    /// message. Within a channel, new seqs follow the input order.
    pub async fn insert_batch(&self, batch: &[NewMessage]) -> Result<Vec<Outcome>, sqlx::Error> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let stored_at = db_time(Utc::now());

        // Optimistic path: assume no id of the batch is stored yet (the common case); the unique
        // index on `id` is the check, also of an id repeated within the batch.
        match self.insert_new(batch, stored_at).await {
            Ok(outcomes) => return Ok(outcomes),
            Err(err) if is_duplicate_id(&err) => {}
            Err(err) => return Err(err),
        }

        // Exact path (a redelivery, or an id repeated within the batch): look the batch's ids
        // up first, so duplicates keep their stored row and seq.
        let mut channel_names: Vec<&str> = batch.iter().map(|m| m.channel.as_str()).collect();
        channel_names.sort_unstable();
        channel_names.dedup();
        let mut tx = self.pool.begin().await?;
        let last_seq = lock_channels(&mut tx, &channel_names).await?;
        let ids: Vec<Uuid> = batch.iter().map(|m| m.id.0).collect();
        let existing: Vec<StoredMessage> = sqlx::query_as(&format!(
            "select {COLUMNS} from messages where id = any($1::uuid[])"
        ))
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let known: HashMap<MessageId, StoredMessage> =
            existing.into_iter().map(|m| (m.id, m)).collect();
        let plan = Plan::new(batch, &last_seq, &known, stored_at);
        plan.write(&mut tx).await?;
        tx.commit().await?;
        Ok(plan.outcomes)
    }

    /// Stores a batch of messages none of which is stored yet, in one statement (autocommit: one
    /// round trip). It advances each channel's `last_seq` by its count in the batch (creating
    /// the channel at need; rows locked in name order, so two writers never deadlock), numbers
    /// the messages from the old `last_seq` in batch order, and inserts them. An id already
    /// stored fails the whole statement, which then changed nothing.
    async fn insert_new(
        &self,
        batch: &[NewMessage],
        stored_at: DateTime<Utc>,
    ) -> Result<Vec<Outcome>, sqlx::Error> {
        let mut counts: std::collections::BTreeMap<&str, i64> = Default::default();
        for message in batch {
            *counts.entry(message.channel.as_str()).or_default() += 1;
        }
        let (names, counts): (Vec<&str>, Vec<i64>) = counts.into_iter().unzip();
        let seqs: Vec<(Uuid, i64)> = sqlx::query_as(
            "with input as ( \
               select * from unnest($1::text[], $2::uuid[], $3::text[], $4::text[], \
                 $5::timestamptz[], $6::text[]) with ordinality as u(c, i, a, t, sa, ui, n) \
             ), counts as ( \
               select * from unnest($7::text[], $8::int8[]) as v(name, count) \
             ), advanced as ( \
               insert into channels as ch (name, last_seq) \
               select name, count from counts order by name \
               on conflict (name) do update set last_seq = ch.last_seq + excluded.last_seq \
               returning ch.name, ch.last_seq \
             ), numbered as ( \
               select u.*, adv.last_seq - counts.count \
                 + row_number() over (partition by u.c order by u.n) as s \
               from input u join advanced adv on adv.name = u.c \
               join counts on counts.name = u.c \
             ), inserted as ( \
               insert into messages (channel, seq, id, author, text, sent_at, stored_at, user_id) \
               select c, s, i, a, t, sa, $9, ui from numbered \
             ) \
             select i, s from numbered order by n",
        )
        .bind(batch.iter().map(|m| m.channel.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|m| m.id.0).collect::<Vec<_>>())
        .bind(batch.iter().map(|m| m.author.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|m| m.text.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|m| m.sent_at).collect::<Vec<_>>())
        .bind(
            batch
                .iter()
                .map(|m| m.user_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(&names)
        .bind(&counts)
        .bind(stored_at)
        .fetch_all(&self.pool)
        .await?;
        let aligned =
            seqs.len() == batch.len() && seqs.iter().zip(batch).all(|((id, _), m)| *id == m.id.0);
        if !aligned {
            return Err(sqlx::Error::Protocol(
                "the batch insert returned rows that do not match the batch".into(),
            ));
        }
        Ok(batch
            .iter()
            .zip(seqs)
            .map(|(message, (_, seq))| Outcome::Inserted(message.stored(seq, stored_at)))
            .collect())
    }

    /// The newest `limit` messages of a channel, oldest first.
    pub async fn newest(
        &self,
        channel: &ChannelName,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, sqlx::Error> {
        let mut page: Vec<StoredMessage> = sqlx::query_as(&format!(
            "select {COLUMNS} from messages where channel = $1 order by seq desc limit $2"
        ))
        .bind(channel.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        page.reverse();
        Ok(page)
    }

    /// Up to `limit` messages with `seq > after`, oldest first.
    pub async fn after(
        &self,
        channel: &ChannelName,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, sqlx::Error> {
        self.range("seq > $2 order by seq", channel, after, limit)
            .await
    }

    /// Up to `limit` messages with `seq < before`, newest first.
    pub async fn before(
        &self,
        channel: &ChannelName,
        before: i64,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, sqlx::Error> {
        self.range("seq < $2 order by seq desc", channel, before, limit)
            .await
    }

    /// A keyset page of a channel: `order` compares `seq` with the cursor (`$2`) and orders.
    async fn range(
        &self,
        order: &str,
        channel: &ChannelName,
        cursor: i64,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, sqlx::Error> {
        sqlx::query_as(&format!(
            "select {COLUMNS} from messages where channel = $1 and {order} limit $3"
        ))
        .bind(channel.as_str())
        .bind(cursor)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// The highest stored seq of a channel (0 when it has none).
    pub async fn last_seq(&self, channel: &ChannelName) -> Result<i64, sqlx::Error> {
        let row: Option<(i64,)> = sqlx::query_as("select last_seq from channels where name = $1")
            .bind(channel.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map_or(0, |(seq,)| seq))
    }
}

/// Locks the channels `names` (sorted) with `for update`, in name order so two writers never
/// deadlock, and returns their `last_seq`. Channels not seen before are created first: one
/// statement when every channel exists (the common case), three otherwise.
async fn lock_channels(
    tx: &mut sqlx::PgConnection,
    names: &[&str],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    const LOCK: &str =
        "select name, last_seq from channels where name = any($1::text[]) order by name for update";
    let locked: Vec<(String, i64)> = sqlx::query_as(LOCK).bind(names).fetch_all(&mut *tx).await?;
    if locked.len() == names.len() {
        return Ok(locked.into_iter().collect());
    }
    sqlx::query(
        "insert into channels (name) select name from unnest($1::text[]) as u(name) \
         order by name on conflict (name) do nothing",
    )
    .bind(names)
    .execute(&mut *tx)
    .await?;
    let locked: Vec<(String, i64)> = sqlx::query_as(LOCK).bind(names).fetch_all(&mut *tx).await?;
    Ok(locked.into_iter().collect())
}

/// A unique violation of `messages.id`: the batch holds an id that is already stored.
fn is_duplicate_id(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.constraint() == Some("messages_id_key"))
}

/// The rows one batch inserts, given the channels' current `last_seq` and the already stored
/// messages among the batch's ids.
struct Plan {
    outcomes: Vec<Outcome>,
    inserts: usize,
    last_seq: HashMap<String, i64>,
    stored_at: DateTime<Utc>,
}

impl Plan {
    fn new(
        batch: &[NewMessage],
        last_seq: &HashMap<String, i64>,
        stored: &HashMap<MessageId, StoredMessage>,
        stored_at: DateTime<Utc>,
    ) -> Self {
        let mut last_seq = last_seq.clone();
        let mut known: HashMap<MessageId, StoredMessage> = HashMap::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut inserts = 0;
        for message in batch {
            if let Some(existing) = stored.get(&message.id).or_else(|| known.get(&message.id)) {
                outcomes.push(if existing.has_content_of(message) {
                    Outcome::Duplicate(existing.clone())
                } else {
                    Outcome::Conflict(existing.clone())
                });
                continue;
            }
            let counter = last_seq
                .get_mut(message.channel.as_str())
                .expect("every channel of the batch was locked");
            *counter += 1;
            let message = message.stored(*counter, stored_at);
            inserts += 1;
            known.insert(message.id, message.clone());
            outcomes.push(Outcome::Inserted(message));
        }
        Self {
            outcomes,
            inserts,
            last_seq,
            stored_at,
        }
    }

    /// Inserts the planned rows and advances the channels' `last_seq`, in one statement; fails
    /// on an id that already exists (and then changes nothing).
    async fn write(&self, tx: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        if self.inserts == 0 {
            return Ok(());
        }
        let rows = Rows::of(&self.outcomes);
        let (names, seqs): (Vec<&str>, Vec<i64>) =
            self.last_seq.iter().map(|(n, s)| (n.as_str(), *s)).unzip();
        sqlx::query(
            "with inserted as ( \
               insert into messages (channel, seq, id, author, text, sent_at, stored_at, user_id) \
               select c, s, i, a, t, sa, $7, ui from unnest($1::text[], $2::int8[], $3::uuid[], \
               $4::text[], $5::text[], $6::timestamptz[], $8::text[]) as u(c, s, i, a, t, sa, ui) \
             ) \
             update channels set last_seq = u.last_seq \
             from unnest($9::text[], $10::int8[]) as u(name, last_seq) \
             where channels.name = u.name and channels.last_seq <> u.last_seq",
        )
        .bind(&rows.channel)
        .bind(&rows.seq)
        .bind(&rows.id)
        .bind(&rows.author)
        .bind(&rows.text)
        .bind(&rows.sent_at)
        .bind(self.stored_at)
        .bind(&rows.user_id)
        .bind(&names)
        .bind(&seqs)
        .execute(tx)
        .await?;
        Ok(())
    }
}

/// Column arrays of a multi-row insert, borrowing from the planned messages.
struct Rows<'a> {
    channel: Vec<&'a str>,
    seq: Vec<i64>,
    id: Vec<Uuid>,
    author: Vec<&'a str>,
    text: Vec<&'a str>,
    sent_at: Vec<DateTime<Utc>>,
    user_id: Vec<Option<&'a str>>,
}

impl<'a> Rows<'a> {
    fn of(outcomes: &'a [Outcome]) -> Self {
        let inserted: Vec<&StoredMessage> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Inserted(m) => Some(m),
                Outcome::Duplicate(_) | Outcome::Conflict(_) => None,
            })
            .collect();
        Self {
            channel: inserted.iter().map(|m| m.channel.as_str()).collect(),
            seq: inserted.iter().map(|m| m.seq).collect(),
            id: inserted.iter().map(|m| m.id.0).collect(),
            author: inserted.iter().map(|m| m.author.as_str()).collect(),
            text: inserted.iter().map(|m| m.text.as_str()).collect(),
            sent_at: inserted.iter().map(|m| m.sent_at).collect(),
            user_id: inserted.iter().map(|m| m.user_id.as_deref()).collect(),
        }
    }
}
