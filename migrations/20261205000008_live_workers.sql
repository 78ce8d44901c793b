-- The worker processes running now, and where their peers reach them.
--
-- A preview evaluates a filter in the memory of the workers that hold the org's partitions. The API process
-- serving it reads each partition's owner from `partition_positions.owner`, finds that worker here, and asks
-- it over its HTTP listener's internal route (`POST /internal/v1/evaluate`) for the partitions it holds.
-- Partitions whose owner is not here, or does not answer, are read from PostgreSQL.
--
-- - `owner` is the name the worker writes in `partition_positions.owner` when it claims a partition.
-- - `address` is `host:port` of its HTTP listener as its peers reach it (`http.advertise`).
-- - `token` authorises calls to that worker's internal route: 32 random bytes (hex), drawn when the process
--   starts, sent as `Authorization: Bearer <token>`. It is stored as is, not hashed like the API's keys: a
--   caller must read it to present it, and whoever can read this table already reads every device, every
--   group and every membership from the same database, while the route answers nothing else than
--   evaluations of data the database holds (counts and samples of devices a filter matches). Hashing it
--   would protect nothing the database does not already give away.
-- - `refreshed_at`: a worker registers when it starts and refreshes its row every few seconds; a clean stop
--   deletes it. Readers ignore rows not refreshed lately (a worker killed leaves its row behind), and a
--   registering worker deletes rows long stale.
CREATE TABLE live_workers (
    owner         text PRIMARY KEY,
    address       text NOT NULL,
    token         text NOT NULL,
    refreshed_at  timestamptz NOT NULL DEFAULT now()
);
