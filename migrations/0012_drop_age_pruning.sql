-- realtime.prune_changes(retention) pruned by capture age alone; it could delete
-- rows of a transaction that committed after the cutoff before any node read
-- them. the gateway prunes with realtime.prune_read_changes (0007) instead;
-- the old function is dropped so nothing calls it by mistake.
drop function if exists realtime.prune_changes(interval);
