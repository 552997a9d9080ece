//! `?filter=` expressions (§3.5, §10 item 23): a subset of go-bexpr,
//! evaluated on the JSON form of each top-level element.
//!
//! Supported: `Sel == v`, `Sel != v`, `Sel is [not] empty`, `v [not] in Sel`,
//! `Sel [not] contains v`, `and`, `or`, `not`, parentheses. Selectors are
//! dotted (`Service.Meta.version`, `Node.Meta["rack"]`); through a list
//! (`Checks.Status`) they match when any element matches. Values are
//! double-quoted or backquoted strings, or bare words/numbers. Anything else
//! (`matches`, …) is a `400`.

use serde_json::Value;

use super::wire::{ApiError, Query};

/// A parsed expression.
#[derive(Debug, Clone)]
pub struct Filter(Expr);

#[derive(Debug, Clone)]
enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Equal(Vec<String>, String),
    Empty(Vec<String>),
    Contains(Vec<String>, String),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    Equal,
    NotEqual,
}

/// The request's filter, if it has one.
pub fn from_query(query: &Query) -> Result<Option<Filter>, ApiError> {
    match query.non_empty("filter") {
        None => Ok(None),
        Some(text) => Filter::parse(text).map(Some).map_err(|problem| {
            ApiError::bad_request(format!(
                "Failed to create boolean expression evaluator: {problem}"
            ))
        }),
    }
}

/// Keeps the elements `filter` accepts (all of them without a filter).
pub fn retain(items: &mut Vec<Value>, filter: Option<&Filter>) {
    if let Some(filter) = filter {
        items.retain(|item| filter.matches(item));
    }
}

impl Filter {
    pub fn parse(text: &str) -> Result<Self, String> {
        let tokens = tokenize(text)?;
        let mut parser = Parser { tokens, at: 0 };
        let expr = parser.or()?;
        match parser.peek() {
            None => Ok(Self(expr)),
            Some(token) => Err(format!("unexpected {token:?}")),
        }
    }

    pub fn matches(&self, item: &Value) -> bool {
        eval(&self.0, item)
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | '[' | ']' => {
                chars.next();
                tokens.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    '[' => Token::OpenBracket,
                    _ => Token::CloseBracket,
                });
            }
            '=' | '!' => {
                chars.next();
                if chars.next() != Some('=') {
                    return Err(format!("expected `{c}=`"));
                }
                tokens.push(if c == '=' {
                    Token::Equal
                } else {
                    Token::NotEqual
                });
            }
            '"' | '`' => {
                chars.next();
                let mut value = String::new();
                loop {
                    match chars.next() {
                        None => return Err("unterminated string".to_string()),
                        Some('\\') if c == '"' => match chars.next() {
                            Some(escaped) => value.push(escaped),
                            None => return Err("unterminated string".to_string()),
                        },
                        Some(end) if end == c => break,
                        Some(other) => value.push(other),
                    }
                }
                tokens.push(Token::Quoted(value));
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "()[]=!\"`".contains(c) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn keyword(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token::Word(w)) if w == word) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.keyword("or") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.keyword("not") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Token::Open) {
            self.at += 1;
            let inner = self.or()?;
            return match self.next() {
                Some(Token::Close) => Ok(inner),
                other => Err(format!("expected `)`, found {other:?}")),
            };
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, String> {
        if let Some(Token::Quoted(value)) = self.peek().cloned() {
            self.at += 1;
            let negate = self.keyword("not");
            if !self.keyword("in") {
                return Err("expected `in` after a value".to_string());
            }
            let selector = self.selector()?;
            return Ok(negated(negate, Expr::Contains(selector, value)));
        }
        let selector = self.selector()?;
        match self.next() {
            Some(Token::Equal) => Ok(Expr::Equal(selector, self.value()?)),
            Some(Token::NotEqual) => Ok(Expr::Not(Box::new(Expr::Equal(selector, self.value()?)))),
            Some(Token::Word(w)) if w == "is" => {
                let negate = self.keyword("not");
                if !self.keyword("empty") {
                    return Err("expected `empty`".to_string());
                }
                Ok(negated(negate, Expr::Empty(selector)))
            }
            Some(Token::Word(w)) if w == "contains" => Ok(Expr::Contains(selector, self.value()?)),
            Some(Token::Word(w)) if w == "not" && self.keyword("contains") => {
                Ok(Expr::Not(Box::new(Expr::Contains(selector, self.value()?))))
            }
            other => Err(format!("unsupported operator {other:?}")),
        }
    }

    fn selector(&mut self) -> Result<Vec<String>, String> {
        let mut path: Vec<String> = match self.next() {
            Some(Token::Word(word)) => word.split('.').map(str::to_string).collect(),
            other => return Err(format!("expected a selector, found {other:?}")),
        };
        while self.peek() == Some(&Token::OpenBracket) {
            self.at += 1;
            match (self.next(), self.next()) {
                (Some(Token::Quoted(key)), Some(Token::CloseBracket)) => path.push(key),
                _ => return Err("expected [\"key\"]".to_string()),
            }
            if let Some(Token::Word(rest)) = self.peek().cloned()
                && rest.starts_with('.')
            {
                self.at += 1;
                path.extend(rest[1..].split('.').map(str::to_string));
            }
        }
        if path.iter().any(String::is_empty) {
            return Err("empty selector segment".to_string());
        }
        Ok(path)
    }

    fn value(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Quoted(value) | Token::Word(value)) => Ok(value),
            other => Err(format!("expected a value, found {other:?}")),
        }
    }
}

fn negated(negate: bool, expr: Expr) -> Expr {
    if negate {
        Expr::Not(Box::new(expr))
    } else {
        expr
    }
}

fn eval(expr: &Expr, item: &Value) -> bool {
    match expr {
        Expr::Or(a, b) => eval(a, item) || eval(b, item),
        Expr::And(a, b) => eval(a, item) && eval(b, item),
        Expr::Not(inner) => !eval(inner, item),
        Expr::Equal(selector, value) => select(item, selector)
            .iter()
            .any(|v| scalar(v).as_deref() == Some(value.as_str())),
        Expr::Empty(selector) => select(item, selector).iter().all(|v| is_empty(v)),
        Expr::Contains(selector, value) => select(item, selector).iter().any(|v| match v {
            Value::Array(items) => items
                .iter()
                .any(|i| scalar(i).as_deref() == Some(value.as_str())),
            Value::Object(map) => map.contains_key(value),
            Value::String(s) => s.contains(value.as_str()),
            _ => false,
        }),
    }
}

/// The values a selector reaches; lists on the way fan out.
fn select<'a>(item: &'a Value, path: &[String]) -> Vec<&'a Value> {
    let mut current = vec![item];
    for segment in path {
        current = current
            .into_iter()
            .flat_map(|value| match value {
                Value::Array(items) => items.iter().collect::<Vec<_>>(),
                other => vec![other],
            })
            .filter_map(|value| field(value, segment))
            .collect();
    }
    current
}

fn field<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    let map = value.as_object()?;
    map.get(name).or_else(|| {
        map.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        Value::Bool(_) | Value::Number(_) => false,
    }
}
