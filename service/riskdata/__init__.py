"""Risk data kept in Redis: counters, watchlists, idempotency records, the decision log."""
