//! Semantic versions and version ranges with the semantics of `github.com/blang/semver`,
//! which Talos uses for `metadata.compatibility.talos.version`.
//!
//! Supported, as blang does it:
//! - versions `MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]`, parsed strictly (no `v`, no leading
//!   zeros, no missing parts); build metadata is ignored when comparing;
//! - comparators `>`, `>=`, `<`, `<=`, `=`/`==`/none, `!=`/`!`; a space between comparators
//!   means AND, a space-separated `||` means OR; a space right after an operator is allowed
//!   (`>= 1.0.0`);
//! - wildcards `1.x` and `1.2.x`, expanded exactly as blang expands them (including its
//!   quirks, e.g. `> 1.x.x` meaning `>= 1.1.0`).
//!
//! Talos removes every `v` directly before a digit before parsing the range
//! ([`Range::parse_talos`]) and checks it against major.minor.patch of its own version only,
//! so `v1.11.0-alpha.1` satisfies `>= v1.11.0` ([`Version::parse_core`]).
//!
//! [`version_format_ok`] is the looser check of `metadata.version`: the regular expressions of
//! the extensions-validator (dates, `PREFIX-vX.Y.Z` tags, `vX.Y`), not blang's grammar.
//!
//! Not supported: npm-style `^`, `~` and hyphen ranges (blang has none of them either).

use std::cmp::Ordering;
use std::fmt;

/// Errors from parsing versions and ranges.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SemverError {
    /// The version string does not follow `MAJOR.MINOR.PATCH[-PRE][+BUILD]`.
    #[error("version {input:?} is invalid: {reason}; hint: write MAJOR.MINOR.PATCH, e.g. 1.11.0")]
    Version {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A range part has no version after its operator.
    #[error("range part {part:?} holds no version; hint: write an operator and a version, e.g. >= 1.9.0")]
    NoVersion {
        /// The part of the range.
        part: String,
    },
    /// A range part has an operator blang does not know.
    #[error("range part {part:?} has unknown operator {op:?}; hint: use one of > >= < <= = !=")]
    Operator {
        /// The part of the range.
        part: String,
        /// The operator text.
        op: String,
    },
    /// `||` at the start or end of a range.
    #[error("range {range:?} {reason}; hint: put a comparator on both sides of ||")]
    Or {
        /// The whole range.
        range: String,
        /// Where the `||` is.
        reason: &'static str,
    },
}

/// One dot-separated pre-release identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identifier {
    /// Digits only; compared numerically.
    Numeric(u64),
    /// Letters, digits and `-`; compared as ASCII text, always above numeric identifiers.
    Alphanumeric(String),
}

impl Ord for Identifier {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Identifier::Numeric(a), Identifier::Numeric(b)) => a.cmp(b),
            (Identifier::Numeric(_), Identifier::Alphanumeric(_)) => Ordering::Less,
            (Identifier::Alphanumeric(_), Identifier::Numeric(_)) => Ordering::Greater,
            (Identifier::Alphanumeric(a), Identifier::Alphanumeric(b)) => a.cmp(b),
        }
    }
}

impl PartialOrd for Identifier {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identifier::Numeric(n) => write!(f, "{n}"),
            Identifier::Alphanumeric(s) => f.write_str(s),
        }
    }
}

/// A semantic version; build metadata is dropped because it never affects precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Patch number.
    pub patch: u64,
    /// Pre-release identifiers; empty for a release.
    pub pre: Vec<Identifier>,
}

impl Version {
    /// A release version without pre-release identifiers.
    pub fn new(major: u64, minor: u64, patch: u64) -> Self {
        Self {
            major,
            minor,
            patch,
            pre: Vec::new(),
        }
    }

    /// Parses strictly, as blang's `Parse`: no `v`, three numbers without leading zeros.
    pub fn parse(s: &str) -> Result<Self, SemverError> {
        let err = |reason: &str| SemverError::Version {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        let mut parts = s.splitn(3, '.');
        let (Some(major), Some(minor), Some(rest)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(err("no MAJOR.MINOR.PATCH elements found"));
        };
        let (rest, build) = match rest.split_once('+') {
            Some((r, b)) => (r, Some(b)),
            None => (rest, None),
        };
        let (patch, pre) = match rest.split_once('-') {
            Some((p, pre)) => (p, Some(pre)),
            None => (rest, None),
        };
        let mut v = Version::new(
            number(major, "major", s)?,
            number(minor, "minor", s)?,
            number(patch, "patch", s)?,
        );
        if let Some(pre) = pre {
            for ident in pre.split('.') {
                v.pre.push(identifier(ident, s)?);
            }
        }
        if let Some(build) = build {
            for ident in build.split('.') {
                if ident.is_empty() || !ident.bytes().all(is_alphanumeric) {
                    return Err(err(
                        "build metadata must be non-empty [0-9A-Za-z-] identifiers",
                    ));
                }
            }
        }
        Ok(v)
    }

    /// Parses the version of the target OS as Talos uses it in constraint checks: an optional
    /// leading `v`, `MAJOR.MINOR[.PATCH]`, pre-release and build dropped
    /// (`v1.11.0-alpha.1` → 1.11.0).
    pub fn parse_core(s: &str) -> Result<Self, SemverError> {
        let trimmed = s.trim();
        let bare = trimmed.strip_prefix('v').unwrap_or(trimmed);
        let core_end = bare.find(['-', '+']).unwrap_or(bare.len());
        let core = &bare[..core_end];
        let nums: Vec<&str> = core.split('.').collect();
        let err = || SemverError::Version {
            input: s.to_string(),
            reason: "expected [v]MAJOR.MINOR[.PATCH]".to_string(),
        };
        if !(2..=3).contains(&nums.len()) {
            return Err(err());
        }
        let parse = |t: &str| -> Result<u64, SemverError> {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            t.parse().map_err(|_| err())
        };
        let patch = match nums.get(2) {
            Some(p) => parse(p)?,
            None => 0,
        };
        Ok(Version::new(parse(nums[0])?, parse(nums[1])?, patch))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let core =
            (self.major, self.minor, self.patch).cmp(&(other.major, other.minor, other.patch));
        if core != Ordering::Equal {
            return core;
        }
        match (self.pre.is_empty(), other.pre.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => self.pre.cmp(&other.pre),
        }
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        for (i, ident) in self.pre.iter().enumerate() {
            f.write_str(if i == 0 { "-" } else { "." })?;
            write!(f, "{ident}")?;
        }
        Ok(())
    }
}

fn is_alphanumeric(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// A major/minor/patch number: digits only, no leading zero.
fn number(text: &str, what: &str, input: &str) -> Result<u64, SemverError> {
    let err = |reason: String| SemverError::Version {
        input: input.to_string(),
        reason,
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(format!("{what} number {text:?} is not a number")));
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(err(format!("{what} number {text:?} has a leading zero")));
    }
    text.parse()
        .map_err(|_| err(format!("{what} number {text:?} is too large")))
}

/// A pre-release identifier: numeric without leading zero, or `[0-9A-Za-z-]+`.
fn identifier(text: &str, input: &str) -> Result<Identifier, SemverError> {
    let err = |reason: String| SemverError::Version {
        input: input.to_string(),
        reason,
    };
    if text.is_empty() {
        return Err(err("a pre-release identifier is empty".into()));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        if text.len() > 1 && text.starts_with('0') {
            return Err(err(format!(
                "pre-release identifier {text:?} has a leading zero"
            )));
        }
        let n = text
            .parse()
            .map_err(|_| err(format!("pre-release identifier {text:?} is too large")))?;
        return Ok(Identifier::Numeric(n));
    }
    if text.bytes().all(is_alphanumeric) {
        return Ok(Identifier::Alphanumeric(text.to_string()));
    }
    Err(err(format!(
        "pre-release identifier {text:?} has characters outside [0-9A-Za-z-]"
    )))
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`, `==` or none.
    Eq,
    /// `!=` or `!`.
    Ne,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "" | "=" | "==" => Op::Eq,
            "!" | "!=" => Op::Ne,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            _ => return None,
        })
    }

    fn holds(self, ord: Ordering) -> bool {
        match self {
            Op::Eq => ord == Ordering::Equal,
            Op::Ne => ord != Ordering::Equal,
            Op::Gt => ord == Ordering::Greater,
            Op::Ge => ord != Ordering::Less,
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
        }
    }
}

/// One `OP VERSION` test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparator {
    /// The operator.
    pub op: Op,
    /// The version on its right.
    pub version: Version,
}

/// A parsed range: satisfied when all comparators of any one alternative hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// OR of AND groups.
    pub alternatives: Vec<Vec<Comparator>>,
}

impl Range {
    /// Parses a range as blang's `ParseRange` does.
    pub fn parse(s: &str) -> Result<Range, SemverError> {
        let parts = split_and_trim(s);
        let groups = split_or(&parts, s)?;
        let mut alternatives = Vec::new();
        for group in groups {
            let mut all = Vec::new();
            for part in expand_wildcards(&group)? {
                let (op, version) = split_comparator(&part)?;
                let op = Op::parse(op).ok_or_else(|| SemverError::Operator {
                    part: part.clone(),
                    op: op.to_string(),
                })?;
                all.push(Comparator {
                    op,
                    version: Version::parse(version)?,
                });
            }
            alternatives.push(all);
        }
        Ok(Range { alternatives })
    }

    /// Parses a Talos compatibility constraint: every `v` right before a digit is removed first.
    pub fn parse_talos(s: &str) -> Result<Range, SemverError> {
        Range::parse(&strip_v(s))
    }

    /// Whether `v` satisfies the range.
    pub fn matches(&self, v: &Version) -> bool {
        self.alternatives
            .iter()
            .any(|all| all.iter().all(|c| c.op.holds(v.cmp(&c.version))))
    }
}

/// Removes every `v` directly followed by an ASCII digit (`>= v1.2.0` → `>= 1.2.0`).
pub fn strip_v(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.char_indices() {
        let before_digit = bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
        if c == 'v' && before_digit {
            continue;
        }
        out.push(c);
    }
    out
}

/// Whether the Talos constraint `constraint` accepts the OS version `os_version`, as Talos
/// checks it: empty constraints accept everything, only major.minor.patch of the OS counts.
pub fn talos_compatible(constraint: &str, os_version: &str) -> Result<bool, SemverError> {
    if constraint.trim().is_empty() {
        return Ok(true);
    }
    let range = Range::parse_talos(constraint)?;
    Ok(range.matches(&Version::parse_core(os_version)?))
}

/// blang's `splitAndTrim`: splits at spaces that do not follow `>`, `<` or `=`, drops spaces
/// inside the parts. Like blang, a one-character final part is dropped.
fn split_and_trim(s: &str) -> Vec<String> {
    let bytes = s.as_bytes();
    let mut result = Vec::new();
    let mut last = 0usize;
    let mut last_char = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b' ' && !matches!(last_char, b'>' | b'<' | b'=') {
            if last + 1 < i {
                result.push(s[last..i].to_string());
            }
            last = i + 1;
        } else if b != b' ' {
            last_char = b;
        }
    }
    if last + 1 < bytes.len() {
        result.push(s[last..].to_string());
    }
    result.into_iter().map(|p| p.replace(' ', "")).collect()
}

/// blang's `splitORParts`: groups separated by `||` parts.
fn split_or(parts: &[String], range: &str) -> Result<Vec<Vec<String>>, SemverError> {
    let mut groups = Vec::new();
    let mut last = 0;
    for (i, p) in parts.iter().enumerate() {
        if p == "||" {
            if i == 0 {
                return Err(SemverError::Or {
                    range: range.to_string(),
                    reason: "starts with ||",
                });
            }
            groups.push(parts[last..i].to_vec());
            last = i + 1;
        }
    }
    if last == parts.len() {
        return Err(SemverError::Or {
            range: range.to_string(),
            reason: "ends with || or is empty",
        });
    }
    groups.push(parts[last..].to_vec());
    Ok(groups)
}

/// blang's `splitComparatorVersion`: the operator is everything before the first digit.
fn split_comparator(part: &str) -> Result<(&str, &str), SemverError> {
    let i = part
        .find(|c: char| c.is_ascii_digit())
        .ok_or_else(|| SemverError::NoVersion {
            part: part.to_string(),
        })?;
    Ok((part[..i].trim(), &part[i..]))
}

/// Which component a trailing `x` wildcard stands for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wildcard {
    None,
    Minor,
    Patch,
}

/// blang's `expandWildcardVersion`, quirks included.
fn expand_wildcards(group: &[String]) -> Result<Vec<String>, SemverError> {
    let mut out = Vec::new();
    for part in group {
        if !part.contains('x') {
            out.push(part.clone());
            continue;
        }
        let (op, version) = split_comparator(part)?;
        let kind = wildcard_kind(version);
        let flat = flatten_wildcard(version);
        let (result_op, increment) = match op {
            ">" => (">=", true),
            ">=" => (">=", false),
            "<" => ("<", false),
            "<=" => ("<", true),
            "" | "=" | "==" => {
                out.push(format!(">={flat}"));
                ("<", true)
            }
            "!=" | "!" => {
                out.push(format!("<{flat}"));
                (">=", true)
            }
            other => {
                return Err(SemverError::Operator {
                    part: part.clone(),
                    op: other.to_string(),
                })
            }
        };
        let version = if !increment {
            flat
        } else {
            match kind {
                Wildcard::Patch => increment_at(&flat, 1),
                Wildcard::Minor => increment_at(&flat, 0),
                // blang leaves the version empty here, which then fails to parse.
                Wildcard::None => String::new(),
            }
        };
        out.push(format!("{result_op}{version}"));
    }
    Ok(out)
}

fn wildcard_kind(version: &str) -> Wildcard {
    let parts: Vec<&str> = version.split('.').collect();
    if parts.last() != Some(&"x") {
        return Wildcard::None;
    }
    match parts.len() {
        2 => Wildcard::Minor,
        3 => Wildcard::Patch,
        _ => Wildcard::None,
    }
}

fn flatten_wildcard(version: &str) -> String {
    let v = version.replacen(".x.x", ".x", 1).replacen(".x", ".0", 1);
    if v.split('.').count() == 2 {
        format!("{v}.0")
    } else {
        v
    }
}

/// Adds one to dot-separated component `index` and zeroes nothing (as blang does).
fn increment_at(version: &str, index: usize) -> String {
    let mut parts: Vec<String> = version.split('.').map(String::from).collect();
    if let Some(p) = parts.get_mut(index) {
        if let Ok(n) = p.parse::<u64>() {
            *p = (n + 1).to_string();
        }
    }
    parts.join(".")
}

/// Whether `version` matches one of the extensions-validator's version patterns.
pub fn version_format_ok(version: &str) -> bool {
    semver_like(version)
        || date_like(version)
        || tagged(version, semver_core)
        || tagged(version, lower_hex)
        || partial_semver(version)
}

/// `[0-9a-f]+`: a commit hash, or a date that happens to be all digits.
fn lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `^v?\d+\.\d+\.\d+(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$`
fn semver_like(v: &str) -> bool {
    let v = v.strip_prefix('v').unwrap_or(v);
    let (core, pre) = match v.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (v, None),
    };
    semver_core(core) && pre.is_none_or(dotted_alphanumeric)
}

/// `\d+\.\d+\.\d+`
fn semver_core(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| all_digits(p))
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*`
fn dotted_alphanumeric(s: &str) -> bool {
    s.split('.')
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// `^\d{8}(\.\d)?$`
fn date_like(v: &str) -> bool {
    let (date, n) = match v.split_once('.') {
        Some((d, n)) => (d, Some(n)),
        None => (v, None),
    };
    date.len() == 8 && all_digits(date) && n.is_none_or(|n| n.len() == 1 && all_digits(n))
}

/// `^v?\d+\.\d+$`
fn partial_semver(v: &str) -> bool {
    let v = v.strip_prefix('v').unwrap_or(v);
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 2 && parts.iter().all(|p| all_digits(p))
}

/// `^PREFIX-v(\d+\.\d+\.\d+(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?)(-(\d+)-g([0-9a-f]+)(-dirty)?)?$`
/// where `prefix_ok` decides the part before `-v`. Go's regexp finds a match if any split
/// works, so every `-v` position is tried.
fn tagged(v: &str, prefix_ok: impl Fn(&str) -> bool) -> bool {
    v.match_indices("-v").any(|(i, _)| {
        let (prefix, rest) = (&v[..i], &v[i + 2..]);
        prefix_ok(prefix) && tag_tail(rest)
    })
}

/// `\d+\.\d+\.\d+(-PRE)?(-N-gHEX(-dirty)?)?`. PRE may hold `-`, so it also absorbs any
/// `git describe` suffix: a dotted alphanumeric tail is all the regexp demands.
fn tag_tail(rest: &str) -> bool {
    match rest.split_once('-') {
        Some((core, tail)) => semver_core(core) && dotted_alphanumeric(tail),
        None => semver_core(rest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match_like_blang() {
        // (range, version, expected)
        let table: &[(&str, &str, bool)] = &[
            (">= 1.0.0", "1.0.0", true),
            (">= 1.0.0", "0.9.9", false),
            (">=1.0.0", "2.0.0", true),
            ("> 1.0.0", "1.0.0", false),
            ("< 1.0.0", "1.0.0-rc.1", true),
            ("<= 1.0.0", "1.0.0", true),
            ("1.2.3", "1.2.3", true),
            ("=1.2.3", "1.2.4", false),
            ("==1.2.3", "1.2.3", true),
            ("!=1.2.3", "1.2.3", false),
            ("!1.2.3", "1.2.4", true),
            (">1.0.0 <2.0.0", "1.5.0", true),
            (">1.0.0 <2.0.0", "2.0.0", false),
            ("<1.0.0 || >=3.0.0", "3.1.0", true),
            ("<1.0.0 || >=3.0.0", "2.0.0", false),
            (">= 1.9.0-alpha.0", "1.9.0", true),
            (">= 1.9.0-alpha.0", "1.9.0-alpha.1", true),
            (">= 1.9.0-alpha.0", "1.9.0-alpha", false),
            ("> 0.15.0-alpha.1", "0.15.0", true),
            ("> 0.15.0-alpha.1", "0.15.0-alpha.1", false),
            ("> 1.0.0-alpha.10", "1.0.0-alpha.9", false),
            ("> 1.0.0-alpha", "1.0.0-alpha.1", true),
            ("> 1.0.0-1", "1.0.0-alpha", true),
            ("1.2.x", "1.2.9", true),
            ("1.2.x", "1.3.0", false),
            ("> 1.x", "2.0.0", true),
            ("> 1.x", "1.9.0", false),
            ("<= 1.2.x", "1.2.99", true),
            (">=1.0.0+build.5", "1.0.0", true),
        ];
        for (range, version, want) in table {
            let r = Range::parse(range).unwrap_or_else(|e| panic!("{range}: {e}"));
            let v = Version::parse(version).unwrap();
            assert_eq!(r.matches(&v), *want, "{range} vs {version}");
        }
    }

    #[test]
    fn bad_ranges_and_versions_are_refused_with_the_offending_text() {
        let table: &[(&str, &str)] = &[
            ("", "ends with || or is empty"),
            ("|| 1.0.0", "starts with ||"),
            ("1.0.0 ||", "ends with ||"),
            (">= v1.0.0", "unknown operator \">=v\""),
            (">= 1.0", "no MAJOR.MINOR.PATCH"),
            (">= 01.0.0", "leading zero"),
            (">= 1.0.0-01", "leading zero"),
            (">= 1.0.0-a..b", "empty"),
            ("~> 1.0.0", "unknown operator \"~>\""),
            (">=", "holds no version"),
            ("> 1.0.0-xyz", "holds no version"),
        ];
        for (range, want) in table {
            let err = Range::parse(range).unwrap_err().to_string();
            assert!(err.contains(want), "{range}: {err}");
        }
    }

    #[test]
    fn talos_strips_v_and_compares_the_core_version_only() {
        assert_eq!(strip_v(">= v1.2.0 || < v0.9.0"), ">= 1.2.0 || < 0.9.0");
        assert_eq!(strip_v("dev v2"), "dev 2");
        assert!(talos_compatible(">= v1.11.0", "v1.11.0-alpha.1").unwrap());
        assert!(talos_compatible(">= v1.11.0", "1.11").unwrap());
        assert!(!talos_compatible(">= v1.12.0", "1.11.0").unwrap());
        assert!(talos_compatible(">= 1.9.0-alpha.0", "1.11.0").unwrap());
        assert!(talos_compatible("", "1.0.0").unwrap());
        assert!(talos_compatible("  ", "garbage").unwrap());
        assert!(talos_compatible(">= v1.0.0", "one.two").is_err());
        assert!(talos_compatible(">= x1.0.0", "1.0.0").is_err());
    }

    #[test]
    fn versions_order_by_semver_precedence() {
        let order = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.10.0",
        ];
        let parsed: Vec<Version> = order.iter().map(|v| Version::parse(v).unwrap()).collect();
        for pair in parsed.windows(2) {
            assert!(pair[0] < pair[1], "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(parsed[2].to_string(), "1.0.0-alpha.beta");
    }

    #[test]
    fn version_formats_follow_the_extensions_validator() {
        let good = [
            "1.2.3",
            "v1.2.3",
            "v3.7.0-v1.0.0",
            "1.0.0-rc.1",
            "20260810",
            "20260810.0",
            "20211216-v1.0.0",
            "580.178.04-v1.15.0-alpha.0-7-gb914c26",
            "5815ee3-v1.8.0",
            "5815ee3-v1.8.0-alpha.0-10-g336fa0f-dirty",
            "535.129.03-v1.8.0-alpha.0-10-g336fa0f",
            "1.29",
            "v4.6",
            "0.4.0-g5c274e6",
        ];
        for v in good {
            assert!(version_format_ok(v), "{v} should pass");
        }
        let bad = [
            "microcode-20220207-v1.0.0",
            "20220117.0-v1.0.0",
            "4",
            "v1",
            "1.2.3.4",
            "latest",
            "1.2.3-",
            "ABC-v1.0.0",
        ];
        for v in bad {
            assert!(!version_format_ok(v), "{v} should fail");
        }
    }
}
