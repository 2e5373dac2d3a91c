//! The one error-conversion path of the binding (mirrors the `error` section of `index.ts`).
//!
//! Every error that reaches JavaScript is a napi `Error` whose message is
//! `[ERR_CODE] message`. The TypeScript layer splits that prefix off into `error.code`
//! (and picks `TypeError` / `RangeError` for the argument codes), keeping the stack.
//! Wrong JS types are caught by the TS layer (`ERR_INVALID_ARG_TYPE`) before any call;
//! the checks here are the second line, so bad input can never reach the core.

use std::fmt::Display;

use napi::bindgen_prelude::BigInt;
use napi::{Error, Result, Status};

/// Code of an argument of the right type but an unacceptable value (a `RangeError`).
pub const ERR_INVALID_ARG_VALUE: &str = "ERR_INVALID_ARG_VALUE";
/// Code of a number or bigint outside its range (a `RangeError`).
pub const ERR_OUT_OF_RANGE: &str = "ERR_OUT_OF_RANGE";

/// A napi error carrying `code` in the message prefix the TS layer parses.
pub fn coded(code: &str, message: impl Display) -> Error {
    Error::new(Status::GenericFailure, format!("[{code}] {message}"))
}

/// Converts an error of the core, keeping its `Caused by` chain when the message does
/// not already say it.
pub fn to_napi_error(error: doublewrite::Error) -> Error {
    coded(error.code(), with_causes(&error))
}

/// Converts a record error of the core (building or decoding a record).
pub fn record_error(error: doublewrite::RecordError) -> Error {
    coded(error.code(), &error)
}

fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str("; caused by: ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// `Result` of the core into `napi::Result`, through [`to_napi_error`].
pub trait IntoNapi<T> {
    fn into_napi(self) -> Result<T>;
}

impl<T> IntoNapi<T> for doublewrite::Result<T> {
    fn into_napi(self) -> Result<T> {
        self.map_err(to_napi_error)
    }
}

/// A u64 from a JS bigint: negative or above 2^64-1 is `ERR_OUT_OF_RANGE`.
pub fn u64_from_bigint(name: &str, value: &BigInt) -> Result<u64> {
    let (_negative, value_u64, lossless) = value.get_u64();
    if !lossless {
        return Err(coded(
            ERR_OUT_OF_RANGE,
            format!("\"{name}\" must be a bigint between 0n and 2n ** 64n - 1n"),
        ));
    }
    Ok(value_u64)
}

/// An optional u64 id (absent means 0).
pub fn optional_u64(name: &str, value: &Option<BigInt>) -> Result<u64> {
    value.as_ref().map_or(Ok(0), |v| u64_from_bigint(name, v))
}
