//! Boot runner.
