"""Archive ground floor: spool, object stores, index, settings. Imports nothing of ours."""
