-- The fold keeps up with the append (issue 14, second pass; docs/ingest.md, "Why the fold fell
-- behind").
--
-- tally_fold names its accounts in arrays (locked_users, locked_tokens) and filters with
-- `= ANY (array)`. PL/pgSQL caches each statement's plan, and after five calls on a connection
-- PostgreSQL may switch to the generic plan, where the array is a parameter: a filter on a
-- sequential scan then compares every row with every element in turn, O(rows × accounts).
-- Measured under the ingest benchmark (200k lines, 1 client): the DELETE of the pending rows
-- took ~1.9 s per tick instead of ~0.1 s, and the settler fell 12–30 s behind the append.
-- With a custom plan per call the array is a constant: PostgreSQL hashes it (or probes an
-- index with it), and the fold costs what it touches. Planning a few statements every tick
-- costs well under a millisecond.
ALTER FUNCTION tally_fold(bigint[], boolean) SET plan_cache_mode = force_custom_plan;
ALTER FUNCTION tally_settle(integer, integer) SET plan_cache_mode = force_custom_plan;
