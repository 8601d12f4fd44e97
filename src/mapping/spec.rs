//! Value specs: how one target field gets its value from a row.
//!
//! A spec is compiled once against the header (columns resolved to indices,
//! constants and defaults checked against the target field) and then
//! evaluated per row without allocating more than the value it produces.
//! Evaluation order: cell or template → `split` → per item: trim,
//! `transform`s, `map`, `date`, `type` → the target field's own rule (a
//! birthdate must be `YYYY-MM-DD`, a phone number digits). An empty result
//! takes the `default`, fails a `required` field, or leaves the field out.

use std::ops::Range;

use serde_json::Value;

use super::date::{DateFormat, Written};
use super::Ctx;
use crate::source::{shorten, CellsRef, FieldError};
use crate::validate;

/// What a target field accepts; decides conversions and the final check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text (numbers given by `type = "integer"` are sent as numbers).
    Text,
    /// An integer (ids, `order`).
    Int,
    /// `true` / `false`.
    Bool,
    /// `YYYY-MM-DD`.
    Date,
    /// `YYYY-MM-DD hh:mm`.
    DateTime,
    /// `YYYY-MM-DDThh:mm:ss` (a feed message's time).
    FeedTime,
    /// Digits only.
    Phone,
    /// An e-mail address.
    Email,
    /// Five characters (a campaign id).
    CampaignId,
    /// Any single value (custom fields, field-group values, record fields).
    Scalar,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Date | Kind::DateTime | Kind::FeedTime => "a date",
            Kind::Phone => "a phone number",
            Kind::Email => "an e-mail address",
            Kind::CampaignId => "a campaign id",
            _ => "a value",
        }
    }

    /// How a date is written for this field, if it takes one.
    fn written(self) -> Option<Written> {
        match self {
            Kind::Date | Kind::Text | Kind::Scalar => Some(Written::Date),
            Kind::DateTime => Some(Written::DateTime),
            Kind::FeedTime => Some(Written::FeedTime),
            _ => None,
        }
    }
}

/// A text transform, applied in the order listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    Trim,
    Lower,
    Upper,
    CollapseSpaces,
    Digits,
    Phone,
}

impl Transform {
    const NAMES: &'static [&'static str] = &[
        "trim",
        "lower",
        "upper",
        "collapse_spaces",
        "digits",
        "phone",
    ];

    fn parse(name: &str) -> Option<Transform> {
        Some(match name {
            "trim" => Transform::Trim,
            "lower" => Transform::Lower,
            "upper" => Transform::Upper,
            "collapse_spaces" => Transform::CollapseSpaces,
            "digits" => Transform::Digits,
            "phone" => Transform::Phone,
            _ => return None,
        })
    }

    fn apply(self, s: &str) -> Result<String, String> {
        Ok(match self {
            Transform::Trim => s.trim().to_string(),
            Transform::Lower => s.to_lowercase(),
            Transform::Upper => s.to_uppercase(),
            Transform::CollapseSpaces => s.split_whitespace().collect::<Vec<_>>().join(" "),
            Transform::Digits => s.chars().filter(char::is_ascii_digit).collect(),
            Transform::Phone => {
                let mut out = String::with_capacity(s.len());
                out.extend(phone_chars(s)?);
                out
            }
        })
    }
}

/// What the `phone` transform keeps of `s`: no `+` in front, no spaces,
/// dashes, dots or brackets; letters are an error.
fn phone_chars(s: &str) -> Result<impl Iterator<Item = char> + '_, String> {
    if s.chars().any(char::is_alphabetic) {
        return Err("letters in a phone number".into());
    }
    let t = s.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    Ok(t.chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')') && !c.is_whitespace()))
}

/// An explicit conversion (`type = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeConv {
    Integer,
    String,
    Bool,
}

/// Where the text comes from.
#[derive(Debug, Clone)]
enum From {
    Column { index: usize, name: String },
    Constant(Value),
    Template { pieces: Vec<Piece>, columns: String },
}

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Cell(usize),
}

/// A compiled value spec.
#[derive(Debug, Clone)]
pub struct Spec {
    from: From,
    kind: Kind,
    required: bool,
    default: Option<Value>,
    transforms: Vec<Transform>,
    date: Option<DateFormat>,
    map: Vec<(String, Value)>,
    split: Option<String>,
    conv: Option<TypeConv>,
    /// `update`: whether an update of an existing customer (or item) sends
    /// this field; `None` takes the table's default.
    update: Option<super::Policy>,
}

const SPEC_KEYS: &[&str] = &[
    "column",
    "value",
    "template",
    "required",
    "default",
    "transform",
    "date",
    "map",
    "split",
    "type",
    "update",
];

impl Spec {
    /// Compiles a spec for a target field. `list` says whether the target
    /// takes a list (`split`). Problems are pushed to `issues` with `key`.
    ///
    /// A table's options are read one by one, in a fixed order (the order
    /// of their problems), and every one is read whatever the others were:
    /// a source that cannot be resolved (a missing column) stops here.
    pub fn compile(
        ctx: &mut Ctx<'_>,
        key: &str,
        raw: &toml::Spanned<toml::Value>,
        kind: Kind,
        list: bool,
    ) -> Option<Spec> {
        let span = raw.span();
        let table = match raw.get_ref() {
            toml::Value::String(column) => {
                let from = ctx.column(key, span, column)?;
                return Some(Spec::plain(from, kind));
            }
            toml::Value::Table(t) => t,
            other => {
                ctx.issue(key, span, format!(
                    "a value spec is a column name (\"Column\") or a table ({{ column = ... }}, {{ value = ... }}, {{ template = ... }}), not {}",
                    other.type_str()
                ));
                return None;
            }
        };
        let mut o = Options {
            key,
            span,
            table,
            ok: true,
        };
        o.check_known(ctx);
        o.check_one_source(ctx)?;
        let mut spec = Spec::plain(o.source(ctx)?, kind);
        spec.required = o.required(ctx);
        spec.default = o.default(ctx);
        spec.transforms = o.transforms(ctx);
        spec.date = o.date(ctx, kind);
        spec.map = o.map(ctx);
        spec.split = o.split(ctx, list);
        spec.conv = o.conv(ctx);
        spec.update = o.update(ctx);
        spec.check_constants(ctx, &mut o);
        o.ok.then_some(spec)
    }

    /// A spec that takes its value from `from` as it is: no options.
    fn plain(from: From, kind: Kind) -> Spec {
        Spec {
            from,
            kind,
            required: false,
            default: None,
            transforms: Vec::new(),
            date: None,
            map: Vec::new(),
            split: None,
            conv: None,
            update: None,
        }
    }

    /// `update = ...` as written on this spec (`None`: the table's default).
    pub fn update(&self) -> Option<super::Policy> {
        self.update
    }

    /// Constants and defaults are checked now, not on every row, and kept
    /// in the target's form.
    fn check_constants(&mut self, ctx: &mut Ctx<'_>, o: &mut Options<'_>) {
        for (what, v) in [
            (
                "value",
                match &self.from {
                    From::Constant(v) => Some(v.clone()),
                    _ => None,
                },
            ),
            ("default", self.default.clone()),
        ] {
            if let Some(v) = v {
                match self.finish_item(v) {
                    Ok(v) if what == "default" => self.default = Some(v),
                    Ok(v) => self.from = From::Constant(v),
                    Err(reason) => o.bad(ctx, format!("{what}: {reason}")),
                }
            }
        }
    }

    /// Evaluates the spec for one row: `Ok(None)` leaves the field out.
    pub fn eval(&self, cells: CellsRef<'_>, trim: bool) -> Result<Option<Value>, FieldError> {
        self.eval_with(cells, trim, true)
    }

    /// The column, when the value is its cell as it is: no split,
    /// transform, map, date or type, and a target that takes text (its
    /// value, when present, is the cell's text).
    fn plain_column(&self) -> Option<usize> {
        match self.from {
            From::Column { index, .. }
                if self.split.is_none()
                    && self.transforms.is_empty()
                    && self.map.is_empty()
                    && self.date.is_none()
                    && self.conv.is_none()
                    && !matches!(self.kind, Kind::Int | Kind::Bool) =>
            {
                Some(index)
            }
            _ => None,
        }
    }

    /// A stage's `when`: whether the value is there and not `false`.
    pub fn holds(&self, cells: CellsRef<'_>, trim: bool) -> Result<bool, FieldError> {
        if self.default.is_none() && self.plain_column().is_some() {
            // The value would be text or nothing: only whether it is there
            // matters, and checking says that without building it.
            return self.eval_with(cells, trim, false).map(|v| v.is_some());
        }
        Ok(match self.eval(cells, trim)? {
            Some(Value::Bool(b)) => b,
            Some(_) => true,
            None => false,
        })
    }

    /// Evaluates; with `keep` false only checks: a present value comes back
    /// as `Value::Null` without building it (what `check` needs, and most of
    /// its cost avoided).
    pub fn eval_with(
        &self,
        cells: CellsRef<'_>,
        trim: bool,
        keep: bool,
    ) -> Result<Option<Value>, FieldError> {
        if let (false, Some(index)) = (keep, self.plain_column()) {
            // Checking a cell taken as it is: only whether it is there and
            // fits the target's rule. Anything else takes the full path,
            // which says what is wrong.
            let cell = cells.get(index).unwrap_or_default();
            let cell = if trim { self::trim(cell) } else { cell };
            if !cell.is_empty() && self.text_rule(cell).is_ok() {
                return Ok(Some(Value::Null));
            }
        }
        let text: std::borrow::Cow<'_, str> = match &self.from {
            From::Constant(_) if !keep => return Ok(Some(Value::Null)),
            From::Constant(v) => return Ok(Some(v.clone())),
            From::Column { index, .. } => {
                let cell = cells.get(*index).unwrap_or_default();
                (if trim { self::trim(cell) } else { cell }).into()
            }
            From::Template { pieces, .. } => {
                let mut any = false;
                let mut out = String::new();
                for p in pieces {
                    match p {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Cell(i) => {
                            let cell = cells.get(*i).unwrap_or_default();
                            let cell = if trim { self::trim(cell) } else { cell };
                            any |= !cell.is_empty();
                            out.push_str(cell);
                        }
                    }
                }
                if any {
                    out.trim().to_string().into()
                } else {
                    "".into()
                }
            }
        };
        let fail = |reason: String| FieldError {
            column: self.column_label(),
            value: Some(shorten(&text)),
            reason,
        };
        let value = match &self.split {
            None => self.item(&text, keep).map_err(&fail)?,
            Some(sep) => {
                // Checking only, the items are counted, not kept.
                let (mut items, mut any) = (Vec::new(), false);
                let mut each = |part: &str| -> Result<(), FieldError> {
                    if let Some(v) = self.item(self::trim(part), keep).map_err(&fail)? {
                        any = true;
                        if keep {
                            items.push(v);
                        }
                    }
                    Ok(())
                };
                let mut chars = sep.chars();
                match (chars.next(), chars.next()) {
                    // A one-character separator (the usual ",") as a char
                    // pattern: the same pieces, without a substring searcher.
                    (Some(c), None) => text.split(c).try_for_each(&mut each)?,
                    _ => text.split(sep.as_str()).try_for_each(&mut each)?,
                }
                match (any, keep) {
                    (false, _) => None,
                    (true, true) => Some(Value::Array(items)),
                    (true, false) => Some(Value::Null),
                }
            }
        };
        match (value, &self.default, self.required) {
            (Some(v), _, _) => Ok(Some(v)),
            (None, Some(_), _) if !keep => Ok(Some(Value::Null)),
            (None, Some(d), _) => Ok(Some(d.clone())),
            (None, None, true) => Err(fail(
                "a value is required here, and the cell is empty".into(),
            )),
            (None, None, false) => Ok(None),
        }
    }

    /// One item (the cell, or one piece of a split cell): transforms, then
    /// [`Spec::convert`]; `None` if it is empty.
    fn item(&self, part: &str, keep: bool) -> Result<Option<Value>, String> {
        // Transforms need an owned string; without them the cell is
        // borrowed until the final value is built (one allocation).
        if self.transforms.is_empty() {
            return if part.is_empty() {
                Ok(None)
            } else {
                self.convert(part, keep).map(Some)
            };
        }
        if let [Transform::Phone] = self.transforms[..] {
            // The usual phone column: the kept characters go to a buffer on
            // the stack when they fit (a phone number always does), then on
            // as the transformed text would.
            let mut buf = [0u8; 64];
            let mut len = 0;
            let mut fits = true;
            for c in phone_chars(part)? {
                if len + c.len_utf8() > buf.len() {
                    fits = false;
                    break;
                }
                len += c.encode_utf8(&mut buf[len..]).len();
            }
            if let (true, Ok(s)) = (fits, std::str::from_utf8(&buf[..len])) {
                return if s.is_empty() {
                    Ok(None)
                } else {
                    self.convert(s, keep).map(Some)
                };
            }
        }
        let mut s = String::new();
        for (i, t) in self.transforms.iter().enumerate() {
            s = t.apply(if i == 0 { part } else { &s })?;
        }
        if s.is_empty() {
            Ok(None)
        } else {
            self.convert(&s, keep).map(Some)
        }
    }

    /// map → date → type → the target's rule, for one non-empty item.
    fn convert(&self, s: &str, keep: bool) -> Result<Value, String> {
        if self.map.is_empty() && self.date.is_none() && self.conv.is_none() {
            if !keep {
                // Checking only: the rule on the borrowed text, no value built.
                return match self.kind {
                    Kind::Int => parse_int(s).map(|_| Value::Null),
                    Kind::Bool => target_bool(s).map(|_| Value::Null),
                    _ => self.text_rule(s).map(|()| Value::Null),
                };
            }
            // The common case: straight to the target's rule, parsing
            // integers from the borrowed text.
            return match self.kind {
                Kind::Int => parse_int(s).map(Value::from),
                _ => self.finish_item(Value::String(s.to_string())),
            };
        }
        let mapped = if self.map.is_empty() {
            None
        } else {
            Some(self.look_up(s)?)
        };
        // A date applies to text: the cell, or what the map turned it into.
        let text = match mapped {
            None => Some(s),
            Some(Value::String(m)) => Some(m.as_str()),
            Some(_) => None,
        };
        if let (Some(format), Some(text)) = (&self.date, text) {
            // Written by us in the target's format: no need to check it again.
            let stamp = format.parse(text)?;
            let how = self.kind.written().unwrap_or(Written::Date);
            return match self.conv {
                None | Some(TypeConv::String) if !keep => Ok(Value::Null),
                None | Some(TypeConv::String) => Ok(Value::String(stamp.write(how))),
                Some(_) => self.finish_item(Value::String(stamp.write(how))),
            };
        }
        if !keep
            && mapped.is_none()
            && self.conv == Some(TypeConv::Integer)
            && matches!(self.kind, Kind::Scalar | Kind::Text | Kind::Int)
        {
            // Checking only: what finish_item does, on the borrowed text.
            return parse_int(s).map(|_| Value::Null);
        }
        self.finish_item(
            mapped
                .cloned()
                .unwrap_or_else(|| Value::String(s.to_string())),
        )
    }

    /// The value `map` gives the text: an exact match first, then one that
    /// differs only in case.
    fn look_up(&self, key: &str) -> Result<&Value, String> {
        let found = self.map.iter().find(|(k, _)| k == key).or_else(|| {
            let key = key.to_lowercase();
            self.map.iter().find(|(k, _)| k.to_lowercase() == key)
        });
        found.map(|(_, v)| v).ok_or_else(|| {
            let keys: Vec<String> = self.map.iter().map(|(k, _)| format!("\"{k}\"")).collect();
            format!("not in the map (expected one of: {})", keys.join(", "))
        })
    }

    /// `type` conversion and the target field's rule.
    fn finish_item(&self, mut v: Value) -> Result<Value, String> {
        if let Some(conv) = self.conv {
            v = match (conv, v) {
                (TypeConv::Integer, Value::String(s)) => Value::from(parse_int(&s)?),
                (TypeConv::Integer, Value::Bool(_)) => return Err("not an integer".into()),
                (TypeConv::String, Value::Number(n)) => Value::String(n.to_string()),
                (TypeConv::String, Value::Bool(b)) => Value::String(b.to_string()),
                (TypeConv::Bool, Value::String(s)) => Value::Bool(
                    parse_bool(&s)
                        .ok_or("not a boolean (expected true/false, yes/no, tak/nie, 1/0)")?,
                ),
                (TypeConv::Bool, Value::Number(n)) => Value::Bool(match n.as_i64() {
                    Some(0) => false,
                    Some(1) => true,
                    _ => return Err("not a boolean".into()),
                }),
                (_, v) => v,
            };
        }
        let text = |v: Value| match v {
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        Ok(match self.kind {
            Kind::Scalar => v,
            Kind::Text => match v {
                Value::Bool(_) => return Err("expected text, got a boolean".into()),
                v => v,
            },
            Kind::Int => match &v {
                Value::Number(n) if n.is_i64() => v,
                Value::String(s) => Value::from(parse_int(s)?),
                _ => return Err("not an integer".into()),
            },
            Kind::Bool => match &v {
                Value::Bool(_) => v,
                Value::String(s) => Value::Bool(target_bool(s)?),
                _ => return Err("not a boolean".into()),
            },
            Kind::Date
            | Kind::DateTime
            | Kind::FeedTime
            | Kind::Phone
            | Kind::Email
            | Kind::CampaignId => {
                let s = text(v).ok_or_else(|| format!("expected {}", self.kind.noun()))?;
                self.text_rule(&s)?;
                Value::String(s)
            }
        })
    }

    /// The rule of a target that takes text of a given form.
    fn text_rule(&self, s: &str) -> Result<(), String> {
        let ok = match self.kind {
            Kind::Date => validate::is_date(s),
            Kind::DateTime => validate::is_date_time(s),
            Kind::FeedTime => validate::is_feed_time(s),
            Kind::Phone => validate::is_phone(s),
            Kind::Email => validate::is_email(s),
            Kind::CampaignId => validate::is_campaign_id(s),
            Kind::Text | Kind::Int | Kind::Bool | Kind::Scalar => true,
        };
        if ok {
            return Ok(());
        }
        Err(match self.kind {
            Kind::Date => "not a date in the format YYYY-MM-DD; add date = \"<input format>\" (e.g. \"%d.%m.%Y\") to convert".into(),
            Kind::DateTime => "not a date in the format YYYY-MM-DD hh:mm; add date = \"<input format>\" (e.g. \"%d.%m.%Y %H:%M\") to convert".into(),
            Kind::FeedTime => "not a date in the format YYYY-MM-DDThh:mm:ss; add date = \"<input format>\" to convert".into(),
            Kind::Phone => "a phone number must be 3 to 20 digits; add transform = [\"phone\"] to strip spaces, dashes and +".into(),
            Kind::Email => "not an e-mail address".into(),
            _ => "a campaign id has exactly five characters, such as 00001".into(),
        })
    }

    /// The column (or the template's columns) the value comes from.
    pub fn column_label(&self) -> Option<String> {
        match &self.from {
            From::Column { name, .. } => Some(name.clone()),
            From::Template { columns, .. } => Some(columns.clone()),
            From::Constant(_) => None,
        }
    }

    /// Makes an empty value an error for this row (fields the API requires).
    pub fn set_required(&mut self) {
        self.required = true;
    }

    /// Whether the value is a constant (no column involved).
    pub fn is_constant(&self) -> bool {
        matches!(self.from, From::Constant(_))
    }
}

/// The options of one spec table, read one at a time, with the key and span
/// their problems are reported under.
struct Options<'a> {
    key: &'a str,
    span: Range<usize>,
    table: &'a toml::Table,
    /// No problem found yet: the spec is usable.
    ok: bool,
}

impl Options<'_> {
    /// Records a problem that makes the spec unusable.
    fn bad(&mut self, ctx: &mut Ctx<'_>, msg: String) {
        ctx.issue(self.key, self.span.clone(), msg);
        self.ok = false;
    }

    /// Every option is one the language knows.
    fn check_known(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(unknown) = self.table.keys().find(|k| !SPEC_KEYS.contains(&k.as_str())) {
            let msg = format!(
                "unknown option \"{unknown}\" (expected one of: {})",
                SPEC_KEYS.join(", ")
            );
            self.bad(ctx, msg);
        }
    }

    /// Exactly one of `column`, `value` and `template`; `None` otherwise.
    fn check_one_source(&self, ctx: &mut Ctx<'_>) -> Option<()> {
        let sources = ["column", "value", "template"]
            .into_iter()
            .filter(|k| self.table.contains_key(*k))
            .count();
        if sources != 1 {
            ctx.issue(
                self.key,
                self.span.clone(),
                "a value spec needs exactly one of column, value or template".to_string(),
            );
            return None;
        }
        Some(())
    }

    /// `column`, `value` or `template`: where the text comes from. `None`
    /// when a column is not in the header; a source of the wrong type is a
    /// problem, and the spec goes on with a null constant.
    fn source(&mut self, ctx: &mut Ctx<'_>) -> Option<From> {
        let (key, span) = (self.key, self.span.clone());
        match (
            self.table.get("column"),
            self.table.get("value"),
            self.table.get("template"),
        ) {
            (Some(toml::Value::String(c)), _, _) => return ctx.column(key, span, c),
            (Some(_), _, _) => self.bad(ctx, "column must be a string (a header name)".into()),
            (_, Some(v), _) => match constant(v) {
                Some(v) => return Some(From::Constant(v)),
                None => self.bad(
                    ctx,
                    "value must be a string, an integer or a boolean".into(),
                ),
            },
            (_, _, Some(toml::Value::String(t))) => return ctx.template(key, span, t),
            (_, _, Some(_)) => self.bad(
                ctx,
                "template must be a string such as \"{Ulica} {Nr domu}\"".into(),
            ),
            _ => {}
        }
        Some(From::Constant(Value::Null))
    }

    /// `update`: `"always"`, `"if_empty"` or `"never"`, only where an update
    /// can leave a field alone (customer fields, field-group values).
    fn update(&mut self, ctx: &mut Ctx<'_>) -> Option<super::Policy> {
        let v = self.table.get("update")?;
        if !ctx.policies {
            self.bad(
                ctx,
                "update applies to [customer] fields and [[field_group]] values only".into(),
            );
            return None;
        }
        match v.as_str().and_then(super::Policy::parse) {
            Some(p) => Some(p),
            None => {
                self.bad(ctx, super::Policy::EXPECTED.into());
                None
            }
        }
    }

    /// `required`: an empty value is an error for the row.
    fn required(&mut self, ctx: &mut Ctx<'_>) -> bool {
        match self.table.get("required") {
            None => false,
            Some(toml::Value::Boolean(b)) => *b,
            Some(_) => {
                self.bad(ctx, "required must be true or false".into());
                false
            }
        }
    }

    /// `default`: the value of an empty cell.
    fn default(&mut self, ctx: &mut Ctx<'_>) -> Option<Value> {
        let d = self.table.get("default")?;
        let v = constant(d);
        if v.is_none() {
            self.bad(
                ctx,
                "default must be a string, an integer or a boolean".into(),
            );
        }
        v
    }

    /// `transform`: one name or a list of them, applied in order.
    fn transforms(&mut self, ctx: &mut Ctx<'_>) -> Vec<Transform> {
        let mut transforms = Vec::new();
        match self.table.get("transform") {
            None => {}
            Some(toml::Value::Array(items)) => {
                for item in items {
                    match item.as_str().and_then(Transform::parse) {
                        Some(t) => transforms.push(t),
                        None => self.bad(
                            ctx,
                            format!(
                                "unknown transform {item} (expected one of: {})",
                                Transform::NAMES.join(", ")
                            ),
                        ),
                    }
                }
            }
            Some(toml::Value::String(s)) => match Transform::parse(s) {
                Some(t) => transforms.push(t),
                None => self.bad(
                    ctx,
                    format!(
                        "unknown transform \"{s}\" (expected one of: {})",
                        Transform::NAMES.join(", ")
                    ),
                ),
            },
            Some(_) => self.bad(
                ctx,
                "transform must be a list such as [\"trim\", \"phone\"]".into(),
            ),
        }
        transforms
    }

    /// `date`: the strftime input format of a field of `kind` that takes a
    /// date.
    fn date(&mut self, ctx: &mut Ctx<'_>, kind: Kind) -> Option<DateFormat> {
        match self.table.get("date")? {
            toml::Value::String(f) => {
                if kind.written().is_none() {
                    self.bad(
                        ctx,
                        "date cannot be used on this field (it does not take a date)".into(),
                    );
                    return None;
                }
                match DateFormat::new(f) {
                    Ok(d) if f.contains('%') => return Some(d),
                    _ => self.bad(ctx, format!("date must be a strftime input format such as \"%d.%m.%Y\", not \"{f}\"")),
                }
            }
            _ => self.bad(
                ctx,
                "date must be a format string such as \"%d.%m.%Y\"".into(),
            ),
        }
        None
    }

    /// `map`: cell text → value, at least one.
    fn map(&mut self, ctx: &mut Ctx<'_>) -> Vec<(String, Value)> {
        let mut map = Vec::new();
        match self.table.get("map") {
            None => {}
            Some(toml::Value::Table(m)) => {
                for (k, v) in m {
                    match constant(v) {
                        Some(v) => map.push((k.clone(), v)),
                        None => self.bad(
                            ctx,
                            format!(
                                "map value for \"{k}\" must be a string, an integer or a boolean"
                            ),
                        ),
                    }
                }
                if m.is_empty() {
                    self.bad(ctx, "map must list at least one value".into());
                }
            }
            Some(_) => self.bad(
                ctx,
                "map must be a table such as { tak = true, nie = false }".into(),
            ),
        }
        map
    }

    /// `split`: the separator of a cell's items, for a target that takes a
    /// list (`list`).
    fn split(&mut self, ctx: &mut Ctx<'_>, list: bool) -> Option<String> {
        match self.table.get("split")? {
            toml::Value::String(s) if !s.is_empty() => {
                if list {
                    return Some(s.clone());
                }
                self.bad(ctx, "split makes a list, and this field takes one value (only email and phone_number take lists)".into());
            }
            _ => self.bad(ctx, "split must be a non-empty string such as \",\"".into()),
        }
        None
    }

    /// `type`: an explicit conversion.
    fn conv(&mut self, ctx: &mut Ctx<'_>) -> Option<TypeConv> {
        match self.table.get("type")? {
            toml::Value::String(t) => match t.as_str() {
                "integer" => return Some(TypeConv::Integer),
                "string" => return Some(TypeConv::String),
                "bool" => return Some(TypeConv::Bool),
                other => self.bad(
                    ctx,
                    format!("unknown type \"{other}\" (expected integer, string or bool)"),
                ),
            },
            _ => self.bad(
                ctx,
                "type must be \"integer\", \"string\" or \"bool\"".into(),
            ),
        }
        None
    }
}

/// `str::trim`, returning at once when the ends are plain ASCII (most
/// cells): the last byte of a multi-byte character is never ASCII, so any
/// Unicode space at an end takes the full path.
fn trim(s: &str) -> &str {
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (Some(a), Some(z)) if is_solid(*a) && is_solid(*z) => s,
        _ => s.trim(),
    }
}

fn is_solid(b: u8) -> bool {
    b.is_ascii() && !validate::is_ascii_space(b)
}

fn constant(v: &toml::Value) -> Option<Value> {
    match v {
        toml::Value::String(s) => Some(Value::String(s.clone())),
        toml::Value::Integer(i) => Some(Value::from(*i)),
        toml::Value::Boolean(b) => Some(Value::Bool(*b)),
        _ => None,
    }
}

/// An integer from text, spaces around it allowed.
fn parse_int(s: &str) -> Result<i64, String> {
    s.trim().parse::<i64>().map_err(|_| "not an integer".into())
}

/// A boolean field's value from text, with the hint a refusal needs.
fn target_bool(s: &str) -> Result<bool, String> {
    parse_bool(s).ok_or_else(|| {
        "not a boolean: add map = { tak = true, nie = false } (or the words your export uses)"
            .into()
    })
}

fn parse_bool(s: &str) -> Option<bool> {
    let s = s.trim();
    if s.is_ascii() {
        // The common case, without the lowercase copy.
        const TRUE: &[&str] = &["true", "yes", "tak", "1", "t", "y"];
        const FALSE: &[&str] = &["false", "no", "nie", "0", "f", "n"];
        if TRUE.iter().any(|w| w.eq_ignore_ascii_case(s)) {
            return Some(true);
        }
        if FALSE.iter().any(|w| w.eq_ignore_ascii_case(s)) {
            return Some(false);
        }
        return None;
    }
    match s.to_lowercase().as_str() {
        "true" | "yes" | "tak" | "1" | "t" | "y" => Some(true),
        "false" | "no" | "nie" | "0" | "f" | "n" => Some(false),
        _ => None,
    }
}

/// Parses `s` with the strftime `input` format (a date, or a date and time)
/// and writes it in `output`. An impossible date (31.02.1990) is an error.
pub fn reformat_date(s: &str, input: &str, output: &str) -> Result<String, String> {
    let format = DateFormat::new(input).map_err(|e| format!("bad date format \"{input}\": {e}"))?;
    let how = match output {
        "%Y-%m-%d %H:%M" => Written::DateTime,
        "%Y-%m-%dT%H:%M:%S" => Written::FeedTime,
        _ => Written::Date,
    };
    format.parse(s).map(|stamp| stamp.write(how))
}

impl<'a> Ctx<'a> {
    /// Resolves a column name against the header, with suggestions.
    fn column(&mut self, key: &str, span: std::ops::Range<usize>, name: &str) -> Option<From> {
        match self.header.iter().position(|h| h == name.trim()) {
            Some(index) => Some(From::Column {
                index,
                name: name.trim().to_string(),
            }),
            None => {
                let msg = self.missing_column(name);
                self.issue(key, span, msg);
                None
            }
        }
    }

    fn template(&mut self, key: &str, span: std::ops::Range<usize>, t: &str) -> Option<From> {
        let mut pieces = Vec::new();
        let mut columns = Vec::new();
        let mut rest = t;
        let mut text = String::new();
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("{{") {
                text.push('{');
                rest = r;
            } else if let Some(r) = rest.strip_prefix("}}") {
                text.push('}');
                rest = r;
            } else if let Some(r) = rest.strip_prefix('{') {
                let Some(end) = r.find('}') else {
                    self.issue(
                        key,
                        span,
                        format!("template \"{t}\" has a {{ without a closing }}"),
                    );
                    return None;
                };
                let name = &r[..end];
                let From::Column { index, name } = self.column(key, span.clone(), name)? else {
                    return None;
                };
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Cell(index));
                columns.push(name);
                rest = &r[end + 1..];
            } else {
                let c = rest.chars().next().unwrap_or_default();
                text.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        if columns.is_empty() {
            self.issue(key, span, format!("template \"{t}\" names no column (write columns as {{Column}}; use value = ... for a constant)"));
            return None;
        }
        Some(From::Template {
            pieces,
            columns: columns.join("\", \""),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_reformatted_and_impossible_dates_refused() {
        assert_eq!(
            reformat_date("12.05.1980", "%d.%m.%Y", "%Y-%m-%d").unwrap(),
            "1980-05-12"
        );
        assert_eq!(
            reformat_date("24.05.2018 12:24", "%d.%m.%Y %H:%M", "%Y-%m-%d %H:%M").unwrap(),
            "2018-05-24 12:24"
        );
        assert_eq!(
            reformat_date("24.05.2018", "%d.%m.%Y", "%Y-%m-%d %H:%M").unwrap(),
            "2018-05-24 00:00"
        );
        assert!(reformat_date("31.02.1990", "%d.%m.%Y", "%Y-%m-%d").is_err());
        assert!(reformat_date("1990/02/01", "%d.%m.%Y", "%Y-%m-%d").is_err());
        // An ISO date is read whatever the format (a spreadsheet's date cell).
        assert_eq!(
            reformat_date("1990-02-01", "%d.%m.%Y", "%Y-%m-%d").unwrap(),
            "1990-02-01"
        );
    }

    #[test]
    fn transforms() {
        let t = |tr: Transform, s: &str| tr.apply(s);
        assert_eq!(
            t(Transform::Phone, "+48 601-234.567").unwrap(),
            "48601234567"
        );
        assert_eq!(t(Transform::Phone, "(22) 123 45 67").unwrap(), "221234567");
        assert!(t(Transform::Phone, "601 234 56x").is_err());
        assert_eq!(t(Transform::Digits, "PL 123-456").unwrap(), "123456");
        assert_eq!(
            t(Transform::CollapseSpaces, " a   b \t c ").unwrap(),
            "a b c"
        );
        assert_eq!(t(Transform::Lower, "ŁÓDŹ").unwrap(), "łódź");
        assert_eq!(t(Transform::Upper, "łódź").unwrap(), "ŁÓDŹ");
        assert_eq!(t(Transform::Trim, "  x ").unwrap(), "x");
    }

    fn column_spec(kind: Kind) -> Spec {
        Spec {
            from: From::Column {
                index: 0,
                name: "c".into(),
            },
            kind,
            required: false,
            default: None,
            transforms: Vec::new(),
            date: None,
            map: Vec::new(),
            split: None,
            conv: None,
            update: None,
        }
    }

    #[test]
    fn checking_agrees_with_building_on_the_short_cuts() {
        let cells = |s: &str| crate::source::Cells::from_strs(&[s]);
        let long = format!("+48 {}", "1 ".repeat(40));
        let mut phone = column_spec(Kind::Phone);
        phone.transforms = vec![Transform::Phone];
        let specs = [column_spec(Kind::Text), column_spec(Kind::Email), phone];
        for spec in &specs {
            for cell in ["", "  ", "x", " a@b.pl ", "+48 601 234 567", "60x", &long] {
                let c = cells(cell);
                let built = spec.eval(c.view(), true);
                let checked = spec.eval_with(c.view(), true, false);
                assert_eq!(checked.is_ok(), built.is_ok(), "{spec:?} {cell:?}");
                assert_eq!(
                    checked.as_ref().ok().map(Option::is_some),
                    built.as_ref().ok().map(Option::is_some)
                );
                assert_eq!(checked.err(), built.err());
            }
        }
    }

    #[test]
    fn a_when_holds_by_its_value_and_its_default() {
        let cells = |s: &str| crate::source::Cells::from_strs(&[s]);
        let plain = column_spec(Kind::Scalar);
        assert!(plain.holds(cells("x").view(), true).unwrap());
        assert!(!plain.holds(cells(" ").view(), true).unwrap());
        let mut with_default = column_spec(Kind::Scalar);
        with_default.default = Some(Value::Bool(false));
        assert!(!with_default.holds(cells("").view(), true).unwrap());
        assert!(with_default.holds(cells("x").view(), true).unwrap());
        let mut mapped = column_spec(Kind::Scalar);
        mapped.map = vec![
            ("tak".into(), Value::Bool(true)),
            ("nie".into(), Value::Bool(false)),
        ];
        assert!(mapped.holds(cells("tak").view(), true).unwrap());
        assert!(!mapped.holds(cells("nie").view(), true).unwrap());
        let mut required = column_spec(Kind::Scalar);
        required.required = true;
        assert!(required.holds(cells("").view(), true).is_err());
    }
}
