//! The sliding signal window behind `/api/v1/signals` (filled in by the signals work).
