//! Version-aware string order, as systemd's `strverscmp_improved()` sorts
//! extension image names (and so decides which sysext is stacked on top).
//!
//! The strings are split into segments, each numeric or alphabetic, that may
//! carry one prefix: `~` (pre-release, older than anything, even the end of
//! the string), `-` (version/release separator), `^` (patched release,
//! newer than `-`) or `.` (point release). Numbers compare by value (leading
//! zeros ignored), letters as bytes with the longer run newer, and a numeric
//! segment is newer than an alphabetic one. Any other character only
//! separates segments. With everything equal, the string with more segments
//! is newer. So `122.1 < 123~rc1-1 < 123 < 123-a < 123-1 < 123^post1 <
//! 123.a-1 < 123.1-1 < 123a-1 < 124-1`.
//!
//! Supported: ASCII semantics on bytes, as systemd has (non-ASCII bytes are
//! separators). Not supported: locale-aware comparison.

use std::cmp::Ordering;

/// A byte that belongs to a version (everything else is a separator).
fn is_version_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'~' | b'-' | b'^' | b'.')
}

/// Compares `a` and `b` as versions; `Less` means `a` is older.
pub fn strverscmp_improved(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        a = skip_separators(a);
        b = skip_separators(b);
        // `~` is older than everything, including the end of the string.
        match prefix_order(&mut a, &mut b, b'~') {
            Ordering::Equal => {}
            other => return other,
        }
        if a.is_empty() || b.is_empty() {
            return (!a.is_empty()).cmp(&!b.is_empty());
        }
        for prefix in [b'-', b'^', b'.'] {
            match prefix_order(&mut a, &mut b, prefix) {
                Ordering::Equal => {}
                other => return other,
            }
        }
        let (order, rest_a, rest_b) = compare_segment(a, b);
        if order != Ordering::Equal {
            return order;
        }
        (a, b) = (rest_a, rest_b);
    }
}

fn skip_separators(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| is_version_byte(b))
        .unwrap_or(s.len());
    &s[start..]
}

/// When either string starts with `prefix`: the one without it is newer;
/// when both have it, both skip it.
fn prefix_order(a: &mut &[u8], b: &mut &[u8], prefix: u8) -> Ordering {
    let has_a = a.first() == Some(&prefix);
    let has_b = b.first() == Some(&prefix);
    if !has_a && !has_b {
        return Ordering::Equal;
    }
    let order = (!has_a).cmp(&!has_b);
    if order == Ordering::Equal {
        *a = &a[1..];
        *b = &b[1..];
    }
    order
}

/// Compares the leading numeric (when either has one) or alphabetic
/// segment; returns the order and what follows each segment.
fn compare_segment<'a>(a: &'a [u8], b: &'a [u8]) -> (Ordering, &'a [u8], &'a [u8]) {
    let numeric =
        a.first().is_some_and(u8::is_ascii_digit) || b.first().is_some_and(u8::is_ascii_digit);
    let take = |s: &'a [u8]| {
        let len = s
            .iter()
            .position(|c| {
                if numeric {
                    !c.is_ascii_digit()
                } else {
                    !c.is_ascii_alphabetic()
                }
            })
            .unwrap_or(s.len());
        s.split_at(len)
    };
    let ((seg_a, rest_a), (seg_b, rest_b)) = (take(a), take(b));
    let order = if numeric {
        compare_numbers(seg_a, seg_b)
    } else {
        let common = seg_a.len().min(seg_b.len());
        seg_a[..common]
            .cmp(&seg_b[..common])
            .then(seg_a.len().cmp(&seg_b.len()))
    };
    (order, rest_a, rest_b)
}

/// Numeric segments: a missing one is older; then by value without parsing
/// (so any length works): fewer significant digits is older.
fn compare_numbers(a: &[u8], b: &[u8]) -> Ordering {
    let present = (!a.is_empty()).cmp(&!b.is_empty());
    if present != Ordering::Equal {
        return present;
    }
    let strip = |s: &'_ [u8]| -> usize { s.iter().take_while(|&&c| c == b'0').count() };
    let (a, b) = (&a[strip(a)..], &b[strip(b)..]);
    a.len().cmp(&b.len()).then(a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// systemd's own example ladder (string-util-fundamental.c), oldest first.
    const LADDER: &[&str] = &[
        "122.1",
        "123~rc1-1",
        "123",
        "123-a",
        "123-a.1",
        "123-1",
        "123-1.1",
        "123^post1",
        "123.a-1",
        "123.1-1",
        "123a-1",
        "124-1",
    ];

    #[test]
    fn the_systemd_ladder_is_strictly_increasing() {
        for (i, older) in LADDER.iter().enumerate() {
            for newer in &LADDER[i + 1..] {
                assert_eq!(
                    strverscmp_improved(older, newer),
                    Ordering::Less,
                    "{older} < {newer}"
                );
                assert_eq!(
                    strverscmp_improved(newer, older),
                    Ordering::Greater,
                    "{newer} > {older}"
                );
            }
            assert_eq!(strverscmp_improved(older, older), Ordering::Equal);
        }
    }

    #[test]
    fn cases_from_the_systemd_test_suite() {
        use Ordering::{Equal, Greater, Less};
        let cases = [
            ("", "", Equal),
            ("", "0", Less),
            ("0~", "0", Less),
            ("1~", "1", Less),
            ("1", "1~", Greater),
            ("~", "", Less),
            ("a", "b", Less),
            ("abc", "abcde", Less),
            ("123", "12", Greater),
            ("00123", "123", Equal),
            ("123a", "123.a", Greater),
            ("123_a", "123a", Equal),
            ("1.2", "1.10", Less),
            ("5.2.0", "5.11", Less),
            ("247.2-3.1.fc33.x86_64", "247.2-3.1.fc33.x86_64", Equal),
            ("1a", "1", Greater),
            ("a1", "1", Less),
            ("12345678901234567890", "12345678901234567891", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(strverscmp_improved(a, b), want, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn image_names_sort_like_systemd_sysext() {
        let mut names = vec!["b_10", "a", "b_9", "b_10~rc1", "10-x", "9-x"];
        names.sort_by(|a, b| strverscmp_improved(a, b));
        // Numeric segments are newer than alphabetic ones.
        assert_eq!(names, ["a", "b_9", "b_10~rc1", "b_10", "9-x", "10-x"]);
    }
}
