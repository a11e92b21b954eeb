//! PortSentry kill templates (`KILL_ROUTE`, `KILL_RUN_CMD`, `KILL_HOSTS_DENY`).
//!
//! PortSentry handed these strings to `system()`, i.e. to a root shell, after pasting an
//! attacker-influenced value into them. sentry splits commands into argv once, at parse
//! time, and substitutes tokens inside single arguments only; the result is run with
//! execve. Shell syntax is rejected up front so that a config relying on it fails loudly
//! instead of doing something different.

use std::fmt;

/// A substitution token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// `$TARGET$`: the address being blocked, formatted by the enforcer.
    Target,
    /// `$PORT$`: the destination port of the triggering probe.
    Port,
    /// `$MODE$`: `tcp` or `udp`.
    Mode,
}

/// Values substituted for the tokens. Every one is formatted by the enforcer itself.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    pub target: &'a str,
    pub port: u16,
    pub mode: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Tok(Token),
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    Empty,
    UnknownToken(String),
    StrayDollar,
    MissingTarget,
    ShellSyntax(char),
    UnterminatedQuote,
    RelativeProgram(String),
    TokenInProgram,
    ControlCharacter,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "empty template"),
            Self::UnknownToken(t) => {
                write!(f, "unknown token ${t}$ (known: $TARGET$, $PORT$, $MODE$)")
            }
            Self::StrayDollar => write!(
                f,
                "'$' outside a $TOKEN$ (shell variables are not supported: commands run without a shell)"
            ),
            Self::MissingTarget => write!(f, "template does not contain $TARGET$"),
            Self::ShellSyntax(c) => write!(
                f,
                "shell syntax '{c}' is not supported (commands run without a shell); put the pipeline in a script and call that"
            ),
            Self::UnterminatedQuote => write!(f, "unterminated quote"),
            Self::RelativeProgram(p) => {
                write!(f, "program '{p}' must be an absolute path (no PATH lookup as root)")
            }
            Self::TokenInProgram => write!(f, "the program name cannot contain a token"),
            Self::ControlCharacter => write!(f, "control character in template"),
        }
    }
}

impl std::error::Error for TemplateError {}

/// Parse `$NAME$` tokens out of one chunk of literal text.
fn push_text(pieces: &mut Vec<Piece>, text: &str) -> Result<(), TemplateError> {
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        if i > 0 {
            push_lit(pieces, &rest[..i]);
        }
        let after = &rest[i + 1..];
        let end = after.find('$').ok_or(TemplateError::StrayDollar)?;
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            return Err(TemplateError::StrayDollar);
        }
        pieces.push(Piece::Tok(match name {
            "TARGET" => Token::Target,
            "PORT" => Token::Port,
            "MODE" => Token::Mode,
            _ => return Err(TemplateError::UnknownToken(name.into())),
        }));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        push_lit(pieces, rest);
    }
    Ok(())
}

fn push_lit(pieces: &mut Vec<Piece>, s: &str) {
    if let Some(Piece::Lit(prev)) = pieces.last_mut() {
        prev.push_str(s);
    } else {
        pieces.push(Piece::Lit(s.to_owned()));
    }
}

fn render(pieces: &[Piece], v: &Vars) -> String {
    let mut out = String::new();
    for p in pieces {
        match p {
            Piece::Lit(s) => out.push_str(s),
            Piece::Tok(Token::Target) => out.push_str(v.target),
            Piece::Tok(Token::Port) => out.push_str(&v.port.to_string()),
            Piece::Tok(Token::Mode) => out.push_str(v.mode),
        }
    }
    out
}

fn has_target(pieces: &[Piece]) -> bool {
    pieces.contains(&Piece::Tok(Token::Target))
}

/// A command template split into argv at parse time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTemplate {
    source: String,
    args: Vec<Vec<Piece>>,
}

impl CommandTemplate {
    /// Split on blanks; `'...'` and `"..."` group words (no escapes inside, as there is no
    /// shell). `| ; & < > \` ( )` outside quotes are refused, as is any `$` that is not a
    /// known token.
    pub fn parse(s: &str) -> Result<Self, TemplateError> {
        if s.chars().any(|c| c.is_control() && c != '\t') {
            return Err(TemplateError::ControlCharacter);
        }
        let mut args: Vec<Vec<Piece>> = Vec::new();
        let mut cur: Option<Vec<Piece>> = None;
        // Byte offset of the next character; every step below ends on a char boundary.
        let mut i = 0;
        while let Some(c) = s[i..].chars().next() {
            match c {
                ' ' | '\t' => {
                    if let Some(a) = cur.take() {
                        args.push(a);
                    }
                    i += 1;
                }
                '\'' | '"' => {
                    let body_start = i + 1;
                    let close = s[body_start..]
                        .find(c)
                        .ok_or(TemplateError::UnterminatedQuote)?;
                    let body = &s[body_start..body_start + close];
                    let arg = cur.get_or_insert_with(Vec::new);
                    push_text(arg, body)?;
                    if body.is_empty() {
                        push_lit(arg, "");
                    }
                    // Past the closing quote.
                    i = body_start + close + 1;
                }
                '|' | ';' | '&' | '<' | '>' | '`' | '(' | ')' | '\\' => {
                    return Err(TemplateError::ShellSyntax(c));
                }
                _ => {
                    // Take the run of ordinary characters up to the next special one.
                    let end = s[i..]
                        .find(|ch: char| " \t'\"|;&<>`()\\".contains(ch))
                        .map_or(s.len(), |n| i + n);
                    push_text(cur.get_or_insert_with(Vec::new), &s[i..end])?;
                    i = end;
                }
            }
        }
        if let Some(a) = cur.take() {
            args.push(a);
        }
        let program = args.first().ok_or(TemplateError::Empty)?;
        let prog = match program.as_slice() {
            [Piece::Lit(p)] => p.clone(),
            [] => return Err(TemplateError::Empty),
            _ => return Err(TemplateError::TokenInProgram),
        };
        if !prog.starts_with('/') {
            return Err(TemplateError::RelativeProgram(prog));
        }
        if !args.iter().any(|a| has_target(a)) {
            return Err(TemplateError::MissingTarget);
        }
        Ok(Self {
            source: s.to_owned(),
            args,
        })
    }

    /// The argv to execute; tokens never split or join arguments.
    pub fn render(&self, v: &Vars) -> Vec<String> {
        self.args.iter().map(|a| render(a, v)).collect()
    }

    /// The absolute path of the program.
    pub fn program(&self) -> &str {
        match self.args.first().map(Vec::as_slice) {
            Some([Piece::Lit(p)]) => p,
            _ => "",
        }
    }

    /// The template as written in the configuration.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// A one-line text template (the TCP-wrappers deny line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineTemplate {
    source: String,
    pieces: Vec<Piece>,
}

impl LineTemplate {
    pub fn parse(s: &str) -> Result<Self, TemplateError> {
        if s.trim().is_empty() {
            return Err(TemplateError::Empty);
        }
        if s.chars().any(|c| c.is_control() && c != '\t') {
            return Err(TemplateError::ControlCharacter);
        }
        let mut pieces = Vec::new();
        push_text(&mut pieces, s)?;
        if !has_target(&pieces) {
            return Err(TemplateError::MissingTarget);
        }
        Ok(Self {
            source: s.to_owned(),
            pieces,
        })
    }

    pub fn render(&self, v: &Vars) -> String {
        render(&self.pieces, v)
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: Vars<'static> = Vars {
        target: "192.0.2.9",
        port: 143,
        mode: "tcp",
    };

    #[test]
    fn splits_portsentry_commands() {
        let t = CommandTemplate::parse("/sbin/iptables -I INPUT -s $TARGET$ -j DROP").unwrap();
        assert_eq!(
            t.render(&V),
            [
                "/sbin/iptables",
                "-I",
                "INPUT",
                "-s",
                "192.0.2.9",
                "-j",
                "DROP"
            ]
        );
        assert_eq!(t.program(), "/sbin/iptables");
        let t = CommandTemplate::parse("/sbin/route add -host $TARGET$ reject").unwrap();
        assert_eq!(t.render(&V)[3], "192.0.2.9");
        let t = CommandTemplate::parse("/usr/local/bin/alert.sh $TARGET$ $PORT$ $MODE$").unwrap();
        assert_eq!(t.render(&V)[1..], ["192.0.2.9", "143", "tcp"]);
    }

    #[test]
    fn quotes_group_and_tokens_never_split() {
        let t = CommandTemplate::parse(r#"/bin/logger -t "sentry block" 'host=$TARGET$/$PORT$'"#)
            .unwrap();
        assert_eq!(
            t.render(&V),
            ["/bin/logger", "-t", "sentry block", "host=192.0.2.9/143"]
        );
        let hostile = Vars {
            target: "1.2.3.4; rm -rf /",
            port: 1,
            mode: "tcp",
        };
        let t = CommandTemplate::parse("/bin/echo $TARGET$").unwrap();
        assert_eq!(t.render(&hostile), ["/bin/echo", "1.2.3.4; rm -rf /"]);
    }

    #[test]
    fn refuses_shell_and_bad_tokens() {
        use TemplateError::*;
        let e = |s| CommandTemplate::parse(s).unwrap_err();
        assert_eq!(e("/sbin/route add $TARGET$ | tee x"), ShellSyntax('|'));
        assert_eq!(e("/sbin/route add $TARGET$; ls"), ShellSyntax(';'));
        assert_eq!(e("/sbin/route add $TARGET$ > /dev/null"), ShellSyntax('>'));
        assert_eq!(e("/bin/echo `id` $TARGET$"), ShellSyntax('`'));
        assert_eq!(e("/bin/echo $HOME $TARGET$"), StrayDollar);
        assert_eq!(e("/bin/echo $(id) $TARGET$"), StrayDollar);
        assert_eq!(e("/bin/echo $HOST$"), UnknownToken("HOST".into()));
        assert_eq!(e("/bin/echo $PORT$"), MissingTarget);
        assert_eq!(
            e("iptables -s $TARGET$"),
            RelativeProgram("iptables".into())
        );
        assert_eq!(e("$TARGET$"), TokenInProgram);
        assert_eq!(e("   "), Empty);
        assert_eq!(e("/bin/echo '$TARGET$"), UnterminatedQuote);
    }

    #[test]
    fn line_templates() {
        let t = LineTemplate::parse("ALL: $TARGET$ : DENY").unwrap();
        assert_eq!(t.render(&V), "ALL: 192.0.2.9 : DENY");
        assert_eq!(
            LineTemplate::parse("ALL: $HOST$").unwrap_err(),
            TemplateError::UnknownToken("HOST".into())
        );
        assert_eq!(
            LineTemplate::parse("ALL: nobody").unwrap_err(),
            TemplateError::MissingTarget
        );
    }
}
