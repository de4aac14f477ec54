//! GBNF (llama.cpp's EBNF, which vLLM's `guided_grammar` also takes) to the
//! Lark dialect llguidance compiles.
//!
//! Rules `name ::= body` become `name: body` (names made Lark-safe: `-` to
//! `_`, lower case, `root` is `start`); string literals stay; character
//! classes `[...]` and `.` become regex terminals; grouping, `|`, `*`, `+`,
//! `?` and `{m,n}` carry over as they are; `#` comments are dropped.

/// Translate a GBNF grammar; the error says where it could not be read.
pub fn to_lark(src: &str) -> Result<String, String> {
    let tokens = lex(src)?;
    let mut out = String::new();
    let mut i = 0;
    while i < tokens.len() {
        // A rule starts where a name is followed by `::=`.
        if let (Tok::Name(name), Some(Tok::Define)) = (&tokens[i], tokens.get(i + 1)) {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&rule_name(name));
            out.push(':');
            i += 2;
            continue;
        }
        if out.is_empty() {
            return Err("a GBNF grammar starts with `name ::= ...`".into());
        }
        let postfix = matches!(&tokens[i], Tok::Punct(p) if ["*", "+", "?"].contains(&p.as_str()) || p.starts_with('{'));
        if !postfix {
            out.push(' ');
        }
        match &tokens[i] {
            Tok::Name(n) => out.push_str(&rule_name(n)),
            Tok::Str(s) => out.push_str(s),
            Tok::Class(c) => {
                out.push('/');
                out.push_str(&c.replace('/', "\\/"));
                out.push('/');
            }
            Tok::Punct(p) => out.push_str(p),
            Tok::Define => return Err("`::=` without a rule name before it".into()),
        }
        i += 1;
    }
    if !out.contains("start:") {
        return Err("a GBNF grammar needs a `root` rule".into());
    }
    out.push('\n');
    Ok(out)
}

fn rule_name(name: &str) -> String {
    if name == "root" {
        return "start".into();
    }
    // Prefixed, so that a GBNF rule can never collide with `start`.
    format!("r_{}", name.replace('-', "_").to_lowercase())
}

#[derive(Debug, PartialEq)]
enum Tok {
    Name(String),
    Define,
    /// A string literal, quotes and escapes as written.
    Str(String),
    /// A character class with its brackets, or `.` as `(.|\n)`.
    Class(String),
    Punct(String),
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    // Everything up to and including the closing `close`, honouring `\` escapes.
    let quoted = |start: usize, close: char| -> Result<usize, String> {
        let mut j = start + 1;
        while j < chars.len() {
            match chars[j] {
                '\\' => j += 2,
                c if c == close => return Ok(j + 1),
                _ => j += 1,
            }
        }
        Err(format!("unclosed `{}` at character {start}", chars[start]))
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ':' if chars[i..].starts_with(&[':', ':', '=']) => {
                out.push(Tok::Define);
                i += 3;
            }
            '"' => {
                let end = quoted(i, '"')?;
                out.push(Tok::Str(chars[i..end].iter().collect()));
                i = end;
            }
            '[' => {
                let end = quoted(i, ']')?;
                out.push(Tok::Class(chars[i..end].iter().collect()));
                i = end;
            }
            '.' => {
                out.push(Tok::Class("(.|\\n)".into()));
                i += 1;
            }
            '{' => {
                let end = chars[i..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or_else(|| format!("unclosed `{{` at character {i}"))?;
                let body: String = chars[i..i + end + 1].iter().collect();
                if !body[1..body.len() - 1]
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == ',' || c == ' ')
                {
                    return Err(format!("bad repetition {body}"));
                }
                out.push(Tok::Punct(body.replace(' ', "")));
                i += end + 1;
            }
            '(' | ')' | '|' | '*' | '+' | '?' => {
                out.push(Tok::Punct(c.to_string()));
                i += 1;
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '-')
                {
                    i += 1;
                }
                out.push(Tok::Name(chars[start..i].iter().collect()));
            }
            other => return Err(format!("unexpected `{other}` at character {i}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_rules_classes_and_repetitions() {
        let gbnf = r#"
            # a greeting
            root   ::= greeting " " name-part{1,2} "!"
            greeting ::= "hi" | "hello"
            name-part ::= [A-Z] [a-z/]* .?
        "#;
        assert_eq!(
            to_lark(gbnf).unwrap(),
            "start: r_greeting \" \" r_name_part{1,2} \"!\"\n\
             r_greeting: \"hi\" | \"hello\"\n\
             r_name_part: /[A-Z]/ /[a-z\\/]/* /(.|\\n)/?\n"
        );
    }

    #[test]
    fn clear_errors() {
        assert!(to_lark("a ::= \"x").unwrap_err().contains("unclosed"));
        assert!(to_lark("a ::= \"x\"").unwrap_err().contains("root"));
        assert!(to_lark("\"x\"").unwrap_err().contains("starts with"));
        assert!(to_lark("root ::= x{a}").unwrap_err().contains("repetition"));
        assert!(to_lark("root ::= \"a\" ; ")
            .unwrap_err()
            .contains("unexpected"));
    }
}
