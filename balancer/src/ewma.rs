//! Peak-EWMA latency estimate per backend (filled in by the policies work).
