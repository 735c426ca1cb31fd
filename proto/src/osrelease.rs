//! os-release(5) files: the root's `/etc/os-release` (or
//! `/usr/lib/os-release`) and the extension-release files of sysext and
//! confext images, which share the format. The composer reads them to
//! validate extensions, the guest init to decide what it merges: one parser,
//! so both read the same values from the same bytes.
//!
//! Format, as systemd's `parse_env_file` reads it: `KEY=VALUE` lines, `#`/`;`
//! comment lines, whitespace around the key and before the value ignored,
//! single quotes (literal), double quotes (backslash escapes `"`, `\`,
//! `` ` ``, `$`; others kept with their backslash), backslash escapes in
//! unquoted values, line continuations (a backslash before the newline),
//! trailing unquoted whitespace trimmed, quoted pieces concatenated (`'a' "b"`
//! is `ab`) while quotes inside an unquoted value stay literal, a carriage
//! return ending a line, the last duplicate key winning. Keys that are not
//! valid variable names are kept (systemd keeps them too) but reported as a
//! problem, like lines without `=` (which are dropped).
//! Not supported: `export` prefixes (systemd does not accept them here either).

/// A parsed release file: assignments in file order plus syntax problems (1-based lines).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    /// `(key, value)` in file order; later duplicates win in [`Release::get`].
    pub entries: Vec<(String, String)>,
    /// `(line, problem)` for lines systemd ignores or reads in a surprising way.
    pub problems: Vec<(usize, String)>,
}

impl Release {
    /// The value of `key` (the last assignment, as systemd's `strv_env_pairs_get`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` when set and not empty (systemd's `isempty`).
    pub fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    /// True when the file carried no assignment at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Parses the text of an os-release or extension-release file.
    pub fn parse(text: &str) -> Release {
        let mut p = Parser::default();
        for c in text.chars() {
            p.step(c);
        }
        p.finish()
    }

    /// Builds one from literal pairs (tests, callers with known values).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Release {
        Release {
            entries: pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            problems: Vec::new(),
        }
    }
}

/// Parser states of systemd's `parse_env_file_internal`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    PreKey,
    Key,
    PreValue,
    Value,
    ValueEscape,
    Single,
    Double,
    DoubleEscape,
    Comment,
    CommentEscape,
}

#[derive(Default)]
struct Parser {
    state: Option<State>,
    key: String,
    value: String,
    /// Length of `value` without unquoted trailing whitespace.
    trimmed_len: usize,
    line: usize,
    key_line: usize,
    out: Release,
}

impl Parser {
    fn step(&mut self, raw: char) {
        // systemd's NEWLINE is "\n\r": a carriage return ends a line too.
        let c = if raw == '\r' { '\n' } else { raw };
        let state = self.state.unwrap_or(State::PreKey);
        let next = match state {
            State::PreKey => self.pre_key(c),
            State::Key => self.in_key(c),
            State::PreValue => self.pre_value(c),
            State::Value => self.in_value(c),
            State::ValueEscape => self.value_escape(c),
            State::Single => self.single(c),
            State::Double => self.double(c),
            State::DoubleEscape => self.double_escape(c),
            State::Comment => match c {
                '\\' => State::CommentEscape,
                '\n' => State::PreKey,
                _ => State::Comment,
            },
            State::CommentEscape => State::Comment,
        };
        if raw == '\n' {
            self.line += 1;
        }
        self.state = Some(next);
    }

    fn pre_key(&mut self, c: char) -> State {
        match c {
            '#' | ';' => State::Comment,
            c if c.is_whitespace() => State::PreKey,
            c => {
                self.key.clear();
                self.key.push(c);
                self.key_line = self.line + 1;
                State::Key
            }
        }
    }

    fn in_key(&mut self, c: char) -> State {
        match c {
            '\n' => {
                self.problem(format!(
                    "line {:?} has no `=`; systemd ignores it",
                    self.key.trim()
                ));
                State::PreKey
            }
            '=' => {
                self.value.clear();
                self.trimmed_len = 0;
                State::PreValue
            }
            c => {
                self.key.push(c);
                State::Key
            }
        }
    }

    fn pre_value(&mut self, c: char) -> State {
        match c {
            '\n' => {
                self.push();
                State::PreKey
            }
            '\'' => State::Single,
            '"' => State::Double,
            '\\' => State::ValueEscape,
            c if c.is_whitespace() => State::PreValue,
            c => {
                self.append(c, false);
                State::Value
            }
        }
    }

    fn in_value(&mut self, c: char) -> State {
        match c {
            '\n' => {
                self.push();
                State::PreKey
            }
            '\\' => State::ValueEscape,
            c => {
                self.append(c, c.is_whitespace());
                State::Value
            }
        }
    }

    fn value_escape(&mut self, c: char) -> State {
        if c != '\n' {
            self.append(c, false);
        }
        State::Value
    }

    fn single(&mut self, c: char) -> State {
        if c == '\'' {
            return State::PreValue;
        }
        self.append(c, false);
        State::Single
    }

    fn double(&mut self, c: char) -> State {
        match c {
            '"' => State::PreValue,
            '\\' => State::DoubleEscape,
            c => {
                self.append(c, false);
                State::Double
            }
        }
    }

    fn double_escape(&mut self, c: char) -> State {
        match c {
            '"' | '\\' | '`' | '$' => self.append(c, false),
            '\n' => {}
            c => {
                self.append('\\', false);
                self.append(c, false);
            }
        }
        State::Double
    }

    /// Appends to the value; unquoted whitespace is kept only if more text follows.
    fn append(&mut self, c: char, is_trailing_ws: bool) {
        self.value.push(c);
        if !is_trailing_ws {
            self.trimmed_len = self.value.len();
        }
    }

    fn push(&mut self) {
        let key = self.key.trim().to_string();
        let value = self.value[..self.trimmed_len].to_string();
        let valid_key = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            self.problem(format!("{key:?} is not a valid variable name"));
        }
        if self.out.entries.iter().any(|(k, _)| *k == key) {
            self.problem(format!("{key} is set more than once; the last value wins"));
        }
        self.out.entries.push((key, value));
    }

    fn problem(&mut self, message: String) {
        self.out.problems.push((self.key_line, message));
    }

    fn finish(mut self) -> Release {
        match self.state.unwrap_or(State::PreKey) {
            State::PreKey | State::Comment | State::CommentEscape => {}
            State::Key => self.problem(format!(
                "line {:?} has no `=`; systemd ignores it",
                self.key.trim()
            )),
            State::Single | State::Double | State::DoubleEscape => {
                self.problem("unterminated quote at the end of the file".into());
                self.push();
            }
            State::PreValue | State::Value | State::ValueEscape => self.push(),
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_files_parse_like_systemd() {
        let text = "# comment\n; also comment\n\nID='flatcar'\nA=\"x \\\"q\\\" \\n \\$y\"\nB = plain value   \nC='a'b\"c\"\nG='x' \"y\"\nD=a\\ b\nE=line\\\ncontinued\nF=\nnoequals\nA=second\n";
        let r = Release::parse(text);
        assert_eq!(r.get("ID"), Some("flatcar"));
        assert_eq!(r.get("A"), Some("second"));
        assert_eq!(r.entries[1].1, "x \"q\" \\n $y");
        assert_eq!(r.get("B"), Some("plain value"));
        assert_eq!(
            r.get("C"),
            Some("ab\"c\""),
            "quotes inside an unquoted value are literal"
        );
        assert_eq!(r.get("G"), Some("xy"));
        assert_eq!(r.get("D"), Some("a b"));
        assert_eq!(r.get("E"), Some("linecontinued"));
        assert_eq!(r.get("F"), Some(""));
        let problems: Vec<&str> = r.problems.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(
            problems,
            [
                "line \"noequals\" has no `=`; systemd ignores it",
                "A is set more than once; the last value wins"
            ]
        );
        assert_eq!((r.problems[0].0, r.problems[1].0), (13, 14));
        let r = Release::parse("ID=\"open");
        assert_eq!(r.get("ID"), Some("open"));
        assert_eq!(r.problems.len(), 1);
    }

    /// The guest's former parser differed in two places, both fixed here in
    /// systemd's favour: quotes after unquoted text are literal, and keys
    /// that are not variable names are kept (with a problem), so a file that
    /// holds only such keys is not "empty".
    #[test]
    fn reads_quoted_and_unquoted_values_like_systemd() {
        let text = r#"
# comment
; also a comment
NAME="Debian GNU/Linux"
ID=debian
  VERSION_ID = '12'
ID_LIKE="ubuntu \"x\" \$y \n"
PLAIN=a\ b   
MIXED=a'b c'"d"  
EMPTY=
bad-key=1
no equals sign
ID=override
"#;
        let rel = Release::parse(text);
        assert_eq!(rel.get("NAME"), Some("Debian GNU/Linux"));
        assert_eq!(rel.get("ID"), Some("override"));
        assert_eq!(rel.get("VERSION_ID"), Some("12"));
        assert_eq!(rel.get("ID_LIKE"), Some("ubuntu \"x\" $y \\n"));
        assert_eq!(rel.get("PLAIN"), Some("a b"));
        assert_eq!(rel.get("MIXED"), Some("a'b c'\"d\""));
        assert_eq!(rel.get("EMPTY"), Some(""));
        assert_eq!(rel.non_empty("EMPTY"), None);
        assert_eq!(rel.get("bad-key"), Some("1"));
        assert!(rel
            .problems
            .iter()
            .any(|(_, p)| p == "\"bad-key\" is not a valid variable name"));
        assert!(!rel.is_empty());
        assert!(Release::parse("# nothing\n\n").is_empty());
        assert!(!Release::parse("1BAD=2\n").is_empty());
    }

    #[test]
    fn quoted_trailing_spaces_are_kept() {
        assert_eq!(Release::parse("A='x  '  \n").get("A"), Some("x  "));
        assert_eq!(Release::parse("A=x\\   \n").get("A"), Some("x "));
        assert_eq!(Release::parse("A=x\r\nB=y").get("A"), Some("x"));
    }

    #[test]
    fn pairs_build_the_same_release() {
        let r = Release::from_pairs(&[("ID", "a"), ("ID", "b")]);
        assert_eq!(r.get("ID"), Some("b"));
        assert_eq!(r.entries, Release::parse("ID=a\nID=b\n").entries);
    }
}
