//! `google.api.http` path templates: the grammar of `http.proto`, parsed once at load and
//! matched segment by segment on the request path.
//!
//! ```text
//! Template = "/" Segments [ ":" Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! ```
//!
//! Matching works on the raw path (the router's normalized form, reserved characters still
//! percent-encoded), so `%2F` inside a segment never acts as a separator. Bound values are
//! decoded afterwards, as the spec asks: fully for a single-segment variable, and except for
//! `%2F` for a multi-segment one, so a client can still tell an encoded slash from a separator.

use super::FieldPath;

/// A parsed path template. Equal when written the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpTemplate {
    text: String,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

/// A path variable bound by a match: the request field it names and its decoded value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub field: FieldPath,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one non-empty segment.
    One,
    /// `**`: the rest of the path, zero or more segments.
    Rest,
}

/// A variable covers the template segments `start..end`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Variable {
    field: FieldPath,
    start: usize,
    end: usize,
}

impl HttpTemplate {
    /// Parses a template; the error says what is wrong in words for a config report.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parser = Parser {
            text,
            pos: 0,
            segments: Vec::new(),
            variables: Vec::new(),
        };
        let verb = parser.template()?;
        let Parser {
            segments,
            variables,
            ..
        } = parser;
        if let Some(i) = segments.iter().position(|s| *s == Segment::Rest)
            && i + 1 != segments.len()
        {
            return Err(format!(
                "path template '{text}': '**' may only be the last segment"
            ));
        }
        for (i, v) in variables.iter().enumerate() {
            if variables[..i].iter().any(|w| w.field == v.field) {
                return Err(format!(
                    "path template '{text}': variable '{}' appears twice",
                    v.field.join(".")
                ));
            }
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
            variables,
            verb,
        })
    }

    /// The variables' bindings when `path` (without its query) matches, else `None`. A value
    /// whose decoding is not UTF-8 cannot fill a proto field, so such a path does not match.
    #[must_use]
    pub fn matches(&self, path: &str) -> Option<Vec<Binding>> {
        let mut rest = path.strip_prefix('/')?;
        if let Some(verb) = &self.verb {
            rest = rest.strip_suffix(verb.as_str())?.strip_suffix(':')?;
        }
        let parts: Vec<&str> = if self.segments.is_empty() {
            if !rest.is_empty() {
                return None;
            }
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let open_ended = self.segments.last() == Some(&Segment::Rest);
        let fixed = if open_ended {
            self.segments.len() - 1
        } else {
            self.segments.len()
        };
        if parts.len() < fixed || (!open_ended && parts.len() != fixed) {
            return None;
        }
        for (segment, part) in self.segments[..fixed].iter().zip(&parts) {
            let ok = match segment {
                Segment::Literal(l) => l == part,
                Segment::One => !part.is_empty(),
                Segment::Rest => true,
            };
            if !ok {
                return None;
            }
        }
        let mut bindings = Vec::with_capacity(self.variables.len());
        for v in &self.variables {
            let single = v.end - v.start == 1 && self.segments[v.start] == Segment::One;
            let end = if v.end == self.segments.len() && open_ended {
                parts.len()
            } else {
                v.end
            };
            let value = if single {
                percent_decode(parts[v.start], false)?
            } else {
                percent_decode(&parts[v.start..end].join("/"), true)?
            };
            bindings.push(Binding {
                field: v.field.clone(),
                value,
            });
        }
        Some(bindings)
    }

    /// The field paths the template binds, in the order written.
    pub fn variables(&self) -> impl Iterator<Item = &FieldPath> {
        self.variables.iter().map(|v| &v.field)
    }

    /// The template as written in the proto file.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for HttpTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses `a.b.c` into its identifiers.
pub fn parse_field_path(text: &str) -> Result<FieldPath, String> {
    let path: FieldPath = text.split('.').map(str::to_owned).collect();
    match path.iter().find(|p| !is_ident(p)) {
        Some(bad) if bad.is_empty() => Err(format!("field path '{text}' has an empty name")),
        Some(bad) => Err(format!(
            "field path '{text}': '{bad}' is not a field name (letters, digits, '_')"
        )),
        None => Ok(path),
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Characters that end a literal; the rest of the grammar is built from them.
fn is_special(c: char) -> bool {
    matches!(c, '/' | '{' | '}' | '*' | ':' | '=')
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn error(&self, what: &str) -> String {
        format!(
            "path template '{}': {what} at offset {}",
            self.text, self.pos
        )
    }

    fn eat(&mut self, c: char) -> bool {
        if self.rest().starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// The whole template; returns the verb.
    fn template(&mut self) -> Result<Option<String>, String> {
        if !self.eat('/') {
            return Err(format!("path template '{}' must start with '/'", self.text));
        }
        if self.rest().is_empty() {
            return Ok(None);
        }
        self.segments(false)?;
        let verb = if self.eat(':') {
            let verb = self.literal();
            if verb.is_empty() {
                return Err(self.error("expected a verb after ':'"));
            }
            Some(verb)
        } else {
            None
        };
        match self.rest().chars().next() {
            None => Ok(verb),
            Some(c) => Err(self.error(&format!("unexpected '{c}'"))),
        }
    }

    fn segments(&mut self, in_variable: bool) -> Result<(), String> {
        loop {
            self.segment(in_variable)?;
            if !self.eat('/') {
                return Ok(());
            }
        }
    }

    fn segment(&mut self, in_variable: bool) -> Result<(), String> {
        if self.rest().starts_with("**") {
            self.pos += 2;
            self.segments.push(Segment::Rest);
        } else if self.eat('*') {
            self.segments.push(Segment::One);
        } else if self.rest().starts_with('{') {
            if in_variable {
                return Err(self.error("variables cannot nest"));
            }
            self.pos += 1;
            self.variable()?;
        } else {
            let literal = self.literal();
            if literal.is_empty() {
                let found = match self.rest().chars().next() {
                    Some(c) => format!("'{c}'"),
                    None => "the end".to_owned(),
                };
                return Err(self.error(&format!("expected a segment, found {found}")));
            }
            self.segments.push(Segment::Literal(literal));
        }
        Ok(())
    }

    fn variable(&mut self) -> Result<(), String> {
        let len = self
            .rest()
            .find(['=', '}'])
            .ok_or_else(|| self.error("unclosed '{'"))?;
        let name = &self.rest()[..len];
        let field =
            parse_field_path(name).map_err(|e| format!("path template '{}': {e}", self.text))?;
        self.pos += len;
        let start = self.segments.len();
        if self.eat('=') {
            self.segments(true)?;
        } else {
            self.segments.push(Segment::One);
        }
        if !self.eat('}') {
            return Err(self.error("expected '}'"));
        }
        self.variables.push(Variable {
            field,
            start,
            end: self.segments.len(),
        });
        Ok(())
    }

    fn literal(&mut self) -> String {
        let len = self.rest().find(is_special).unwrap_or(self.rest().len());
        let literal = self.rest()[..len].to_owned();
        self.pos += len;
        literal
    }
}

/// Decodes `%XX` escapes; `keep_slash` leaves `%2F` as written. `None` when an escape is
/// malformed or the result is not UTF-8.
fn percent_decode(raw: &str, keep_slash: bool) -> Option<String> {
    if !raw.contains('%') {
        return Some(raw.to_owned());
    }
    let how = crate::percent::Decoding {
        keep_slash,
        ..Default::default()
    };
    String::from_utf8(crate::percent::decode(raw.as_bytes(), how).ok()?).ok()
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
