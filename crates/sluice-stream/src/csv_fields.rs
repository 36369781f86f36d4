//! serde over the fields of one CSV line without quotes, read in place: the columns in order
//! make a struct, a tuple or a sequence, each column parsed as its field's type (an empty
//! column is `None` for an `Option`). Lines with quotes go through the csv crate instead.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, SeqAccess, Visitor};

/// What was wrong with a line, column counted from 1.
#[derive(Debug)]
pub(crate) struct FieldError(String);

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FieldError {}

impl de::Error for FieldError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

/// `T` from the fields of `line` (split at every comma).
pub(crate) fn from_line<'de, T: de::Deserialize<'de>>(line: &'de str) -> Result<T, FieldError> {
    T::deserialize(Fields { fields: line.split(','), column: 0 })
}

struct Fields<'de> {
    fields: std::str::Split<'de, char>,
    column: usize,
}

impl<'de> de::Deserializer<'de> for Fields<'de> {
    type Error = FieldError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        visitor.visit_seq(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de> SeqAccess<'de> for Fields<'de> {
    type Error = FieldError;

    fn next_element_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<Option<S::Value>, FieldError> {
        let Some(text) = self.fields.next() else { return Ok(None) };
        self.column += 1;
        let column = self.column;
        seed.deserialize(Field { text })
            .map(Some)
            .map_err(|FieldError(problem)| FieldError(format!("column {column}: {problem}")))
    }
}

/// One column's text.
struct Field<'de> {
    text: &'de str,
}

impl Field<'_> {
    fn parse<N: std::str::FromStr>(&self, what: &str) -> Result<N, FieldError>
    where
        N::Err: fmt::Display,
    {
        self.text.parse().map_err(|e| FieldError(format!("{:?} is not {what}: {e}", self.text)))
    }
}

macro_rules! parse_as {
    ($($method:ident $visit:ident $ty:ty, $what:literal;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
                visitor.$visit(self.parse::<$ty>($what)?)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Field<'de> {
    type Error = FieldError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        visitor.visit_borrowed_str(self.text)
    }

    parse_as! {
        deserialize_bool visit_bool bool, "true or false";
        deserialize_i8 visit_i8 i8, "an i8";
        deserialize_i16 visit_i16 i16, "an i16";
        deserialize_i32 visit_i32 i32, "an i32";
        deserialize_i64 visit_i64 i64, "an i64";
        deserialize_i128 visit_i128 i128, "an i128";
        deserialize_u8 visit_u8 u8, "a u8";
        deserialize_u16 visit_u16 u16, "a u16";
        deserialize_u32 visit_u32 u32, "a u32";
        deserialize_u64 visit_u64 u64, "a u64";
        deserialize_u128 visit_u128 u128, "a u128";
        deserialize_f32 visit_f32 f32, "a number";
        deserialize_f64 visit_f64 f64, "a number";
        deserialize_char visit_char char, "one character";
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        if self.text.is_empty() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, FieldError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, FieldError> {
        visitor.visit_enum(self.text.into_deserializer()).map_err(|e: de::value::Error| FieldError(e.to_string()))
    }

    serde::forward_to_deserialize_any! {
        str string bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    enum Kind {
        View,
        Buy,
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Click<'a> {
        user: String,
        item: &'a str,
        time: i64,
        kind: Kind,
        price: Option<f64>,
    }

    #[test]
    fn columns_fill_structs_tuples_and_sequences_in_place() {
        let click: Click<'_> = from_line("u1,i9,1700000000000,Buy,").unwrap();
        assert_eq!(
            click,
            Click { user: "u1".into(), item: "i9", time: 1_700_000_000_000, kind: Kind::Buy, price: None }
        );
        let tuple: (u8, bool, char, Option<f32>) = from_line("7,true,x,2.5").unwrap();
        assert_eq!(tuple, (7, true, 'x', Some(2.5)));
        let all: Vec<String> = from_line("a,,c").unwrap();
        assert_eq!(all, vec!["a", "", "c"]);
        assert_eq!(from_line::<(String,)>("only").unwrap(), ("only".to_owned(),));
    }

    #[test]
    fn a_bad_column_is_named_with_what_it_should_be() {
        let error = from_line::<(String, u32)>("a,-1").unwrap_err().to_string();
        assert_eq!(error, r#"column 2: "-1" is not a u32: invalid digit found in string"#);
        let error = from_line::<(String, Kind)>("a,Sell").unwrap_err().to_string();
        assert!(error.starts_with("column 2: unknown variant `Sell`"), "{error}");
        let error = from_line::<(String, String, i64)>("a,b").unwrap_err().to_string();
        assert!(error.contains("invalid length 2"), "{error}");
    }
}
