//! Absolute path strings of an extension's tree, compared by whole component.

/// Whether `path` is `base` or below it, by whole component.
pub fn under(path: &str, base: &str) -> bool {
    let base = base.trim_end_matches('/');
    if base.is_empty() {
        return true;
    }
    path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'))
}
