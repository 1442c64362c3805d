-- An index the local broker's SQLite storage lacks (Tansu 0.6.0), created before the broker starts.
--
-- Tansu answers a Fetch with one query for the records and then, for every record it returns, one
-- query for that record's headers (`header_fetch.sql`: `... where r.offset_id = $4`). Its `header`
-- table has no index, so each of those queries scans every header the broker holds, of every topic:
-- a fetch of n records costs n full scans, and draining a backlog is quadratic in what the broker
-- stores. With 52,000 stored headers (20,000 records of two headers each, plus what consumers wrote
-- back) one record's header query took 3.4 ms, so a plain consumer read 20,000 records at about
-- 470 records/s and every later reader of the same broker was slower than the one before. With the
-- index the same query takes 0.012 ms and the same consumer reads about 10,000 records/s.
--
-- The table is created here exactly as Tansu 0.6.0 creates it (ddl/040-header.sql in tansu-storage,
-- `create table if not exists`, so Tansu keeps it), with the index beside it. Applied to the
-- database file before the broker starts (the test harness, scripts/run-local.sh and the benchmark
-- scripts): the broker does not wait for a lock, so a second writer while it runs would fail its
-- start-up or a produce. Safe to apply again to an existing database. Real Kafka stores records in
-- indexed log segments and needs nothing like it.
create table if not exists header (
    topition integer,
    offset_id integer,
    k blob,
    v blob,
    last_updated datetime default current_timestamp not null,
    created_at datetime default current_timestamp not null,
    foreign key (topition, offset_id) references record (topition, offset_id) on delete cascade
);
create index if not exists header_topition_offset on header (topition, offset_id);
