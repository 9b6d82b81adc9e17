//! A cumulative latency histogram for Prometheus (filled in by the signals work).
