-- The durable, unlimited, per-channel ordered log.
--
-- `channels.last_seq` is the per-channel sequence counter. Its row is locked (`for update`)
-- by the transaction that assigns the next seqs, so seq is contiguous and never reused, even
-- when two workers touch the same channel during a consumer-group rebalance.
create table channels (
    name text primary key,
    last_seq bigint not null default 0 check (last_seq >= 0)
);

-- No foreign key to `channels`: the insert path creates the channel row in the same
-- transaction, and a per-row RI trigger would cost more than the insert itself.
create table messages (
    channel text not null,
    seq bigint not null check (seq > 0),
    id uuid not null,
    author text not null,
    text text not null,
    sent_at timestamptz not null,
    stored_at timestamptz not null,
    primary key (channel, seq)
);

-- Message identity: a redelivered record is recognised by its id and never stored twice.
create unique index messages_id_key on messages (id);
