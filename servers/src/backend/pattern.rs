//! Namespace patterns: globs over repository names. `*` matches any run of characters
//! within one path segment (no `/`), `**` any run including `/`, `?` one character other
//! than `/`; everything else matches itself. The whole name must match: `library/*` matches
//! `library/alpine` but not `library/a/b` nor `library`; `**` matches every name.

use std::fmt;

use super::BackendError;

/// Longest pattern, bytes (names are at most 255).
const PATTERN_LEN_MAX: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`
    One,
    /// `*`
    Segment,
    /// `**`
    Any,
}

/// A parsed namespace pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    tokens: Vec<Token>,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, BackendError> {
        if text.is_empty() {
            return Err(BackendError::new(
                super::ErrorKind::Config,
                "namespace pattern is empty (use \"**\" for every repository)",
            ));
        }
        if text.len() > PATTERN_LEN_MAX {
            return Err(BackendError::new(
                super::ErrorKind::Config,
                format!("namespace pattern is longer than {PATTERN_LEN_MAX} bytes"),
            ));
        }
        let mut tokens = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    Token::Any
                }
                '*' => Token::Segment,
                '?' => Token::One,
                c => Token::Literal(c),
            });
        }
        Ok(Pattern {
            text: text.to_owned(),
            tokens,
        })
    }

    /// `**`.
    pub fn any() -> Pattern {
        Pattern {
            text: "**".to_owned(),
            tokens: vec![Token::Any],
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        // Dynamic programming over (token, character): bounded by pattern × name lengths
        // (at most 512 × 255), no backtracking blow-up.
        let n = name.len();
        let mut reachable = vec![false; n + 1];
        reachable[0] = true;
        for token in &self.tokens {
            let mut next = vec![false; n + 1];
            match token {
                Token::Literal(c) => {
                    for (i, ch) in name.iter().enumerate() {
                        next[i + 1] = reachable[i] && ch == c;
                    }
                }
                Token::One => {
                    for (i, ch) in name.iter().enumerate() {
                        next[i + 1] = reachable[i] && *ch != '/';
                    }
                }
                Token::Segment | Token::Any => {
                    let crosses = matches!(token, Token::Any);
                    // next[i]: the token matched empty at i, or grew the run that reached
                    // i - 1 by name[i - 1].
                    let mut run = false;
                    for (i, slot) in next.iter_mut().enumerate() {
                        let grows = i > 0 && run && (crosses || name[i - 1] != '/');
                        run = reachable[i] || grows;
                        *slot = run;
                    }
                }
            }
            reachable = next;
        }
        reachable[n]
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn check(pattern: &str, name: &str, expected: bool) {
        let parsed = Pattern::parse(pattern).unwrap();
        assert_eq!(parsed.matches(name), expected, "{pattern} against {name}");
    }

    #[test]
    fn globs() {
        check("**", "library/alpine", true);
        check("**", "a", true);
        check("library/*", "library/alpine", true);
        check("library/*", "library/a/b", false);
        check("library/*", "library", false);
        check("library/**", "library/a/b", true);
        check("team-?/app", "team-a/app", true);
        check("team-?/app", "team-ab/app", false);
        check("*/app", "x/app", true);
        check("*/app", "x/y/app", false);
        check("**/app", "x/y/app", true);
        check("exact/name", "exact/name", true);
        check("exact/name", "exact/names", false);
        check("a*b*c", "axxbyyc", true);
        check("a*b*c", "axxbyy", false);
        assert!(Pattern::parse("").is_err());
    }
}
