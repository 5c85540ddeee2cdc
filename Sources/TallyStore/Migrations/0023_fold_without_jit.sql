-- The fold and the roll-up run without PostgreSQL's JIT (issue 14, fourth pass; docs/ingest.md).
--
-- Their statements touch thousands of pending rows, so the planner's cost estimate passes
-- jit_above_cost (100,000 by default), and since 0018 every call is planned for its own arrays:
-- with `jit = on` (PostgreSQL's default wherever LLVM is installed) each tick compiled its
-- statements with LLVM again. Measured with `perf` under `ops/bench ingest` (2 clients): the
-- settler's backend spent about a third of its CPU in libLLVM, ~5 % of the whole machine's,
-- to speed up expressions that run a few thousand times. Interpreting them is cheaper.
-- A function's SET applies to every statement it runs, nested calls included.
ALTER FUNCTION tally_fold(bigint[], boolean) SET jit = off;
ALTER FUNCTION tally_settle(integer, integer) SET jit = off;
ALTER FUNCTION tally_roll_up(integer, boolean) SET jit = off;
