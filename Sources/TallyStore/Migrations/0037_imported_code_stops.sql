-- A redemption code that `tally import new-api` brought in disabled, or disabled on a later run,
-- had no record of who stopped it, so its maker (an admin) could enable it again: only whoever
-- changed a code's status last, or root, may enable it (6cc32c4), and there was no change to go
-- by. The import now records each code it stops as the command line's (root's); this gives the
-- codes stopped before that the same record. Tally makes its own codes enabled and records
-- every status change it makes, so a disabled code without a record came from an import.
-- Through a temporary table: `redemptions` is a reference table on Citus, `audit_log` stays on
-- the coordinator, and one statement over both is not planned there.
CREATE TEMPORARY TABLE unrecorded_code_stops ON COMMIT DROP AS
    SELECT id FROM redemptions WHERE status = 2;

INSERT INTO audit_log (actor_id, actor, action, target, before, after)
SELECT NULL, 'cli', 'redemption.disable', 'redemption:' || s.id, NULL, jsonb_build_object('status', '2')
FROM unrecorded_code_stops s
WHERE NOT EXISTS (SELECT 1 FROM audit_log a
                  WHERE a.target = 'redemption:' || s.id AND a.action IN ('redemption.disable', 'redemption.enable'));
