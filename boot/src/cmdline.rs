//! The kernel command line, as far as the init cares.
//!
//! Supported: `strata.smoke` (bare, or `=1|y|yes|true|on` to power off after
//! the report; anything else means off), `init=<path>` (the program to exec
//! in the merged root; the last one wins, as in the kernel), double quotes
//! around a whole parameter or its value (the kernel's rules), and `--`
//! (everything after it belongs to init, not to the kernel, so it is ignored).
//! Not supported: backslash escapes (the kernel has none either).

use std::path::PathBuf;

/// The init run when the command line names none.
pub const DEFAULT_INIT: &str = "/sbin/init";

/// What the init takes from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// Power off after the report instead of switching root.
    pub smoke: bool,
    /// The program to exec in the merged root.
    pub init: PathBuf,
}

impl Default for Cmdline {
    fn default() -> Self {
        Cmdline {
            smoke: false,
            init: PathBuf::from(DEFAULT_INIT),
        }
    }
}

impl Cmdline {
    /// Reads the parameters the init understands; unknown ones are ignored.
    pub fn parse(text: &str) -> Cmdline {
        let mut cmdline = Cmdline::default();
        for param in split_params(text) {
            if param == "--" {
                break;
            }
            let (key, value) = match param.split_once('=') {
                Some((key, value)) => (key, Some(value)),
                None => (param.as_str(), None),
            };
            match (key, value) {
                ("strata.smoke", value) => cmdline.smoke = value.is_none_or(is_true),
                ("init", Some(path)) if !path.is_empty() => cmdline.init = PathBuf::from(path),
                _ => {}
            }
        }
        cmdline
    }
}

fn is_true(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().as_str(),
        "1" | "y" | "yes" | "true" | "on"
    )
}

/// Splits at unquoted whitespace and drops the quotes, as the kernel's
/// `next_arg()` does: `a="b c"` and `"a=b c"` both give `a=b c`.
pub fn split_params(text: &str) -> Vec<String> {
    let mut params = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut started = false;
    for ch in text.chars() {
        match ch {
            '"' => {
                in_quotes = !in_quotes;
                started = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if started {
                    params.push(std::mem::take(&mut current));
                    started = false;
                }
            }
            c => {
                current.push(c);
                started = true;
            }
        }
    }
    if started {
        params.push(current);
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_boot_sbin_init() {
        let c = Cmdline::parse("console=ttyS0 quiet\n");
        assert_eq!(c, Cmdline::default());
        assert_eq!(c.init, PathBuf::from("/sbin/init"));
        assert!(!c.smoke);
    }

    #[test]
    fn smoke_accepts_bare_and_true_values_only() {
        assert!(Cmdline::parse("strata.smoke=1").smoke);
        assert!(Cmdline::parse("strata.smoke").smoke);
        assert!(Cmdline::parse("strata.smoke=Yes").smoke);
        assert!(!Cmdline::parse("strata.smoke=0").smoke);
        assert!(!Cmdline::parse("strata.smoke=maybe").smoke);
        assert!(!Cmdline::parse("strata.smoker=1").smoke);
        assert!(!Cmdline::parse("strata.smoke=1 strata.smoke=0").smoke);
    }

    #[test]
    fn last_init_wins_and_empty_is_ignored() {
        let c = Cmdline::parse("init=/bin/sh console=ttyS0 init=/lib/systemd/systemd init=");
        assert_eq!(c.init, PathBuf::from("/lib/systemd/systemd"));
    }

    #[test]
    fn rdinit_is_not_init() {
        assert_eq!(
            Cmdline::parse("rdinit=/init").init,
            PathBuf::from("/sbin/init")
        );
    }

    #[test]
    fn quotes_group_words_like_the_kernel() {
        assert_eq!(
            split_params("a=\"b c\"  \"d=e f\" g\t"),
            vec!["a=b c", "d=e f", "g"]
        );
        assert_eq!(split_params("x=\"\""), vec!["x="]);
        assert!(split_params(" \n").is_empty());
    }

    #[test]
    fn parameters_after_double_dash_belong_to_init() {
        let c = Cmdline::parse("console=ttyS0 -- strata.smoke=1 init=/x");
        assert_eq!(c, Cmdline::default());
    }
}
