//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with an HTTP
//! status. The one place where a [`RequestError`] becomes an HTTP answer: the status follows
//! from the error's canonical code, the `code` string from its variant, `param` from the field
//! it names; never from the message text.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::{header, HeaderValue, StatusCode};
use serde_json::json;
use tonic::Code;

use crate::api::convert::{LIMIT_HEADER, RETRY_AFTER_MS};
use crate::request::RequestError;

/// The HTTP status of a request error.
pub fn status_of(e: &RequestError) -> StatusCode {
    match e.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// OpenAI's error `type` for a status.
fn type_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

/// A short stable code for the error, by its variant.
fn code_of(e: &RequestError) -> &'static str {
    match e {
        RequestError::Invalid(_) | RequestError::InvalidField { .. } => "invalid_value",
        RequestError::OverLimit { .. } => "over_limit",
        RequestError::UnknownModel(_) => "model_not_found",
        RequestError::ChatTemplate(_) => "chat_template",
        RequestError::TenantLimit(r) => r.reason(),
        RequestError::QueueFull(_) => "queue_full",
        RequestError::EngineStopped(_) => "engine_stopped",
        RequestError::ModelUnavailable(_) => "model_unavailable",
        RequestError::HardwareFault { .. } => "hardware_fault",
        RequestError::ShuttingDown => "shutting_down",
        RequestError::Deadline(_) => "deadline_exceeded",
        RequestError::Generation(_) | RequestError::Internal(_) => "internal_error",
        RequestError::Audit(_) => "audit_unavailable",
        RequestError::Unauthenticated(_) => "unauthenticated",
        RequestError::PermissionDenied(_) => "permission_denied",
    }
}

/// The error object of a request error, as its body or an SSE event carries it.
pub fn body_of(e: &RequestError) -> serde_json::Value {
    json!({
        "error": {
            "message": e.to_string(),
            "type": type_of(status_of(e)),
            "param": e.field(),
            "code": code_of(e),
        }
    })
}

/// The whole answer for a request error, with `Retry-After` (seconds, rounded up) and
/// `retry-after-ms` on refusals that may pass later, and `x-appl-limit` naming the limit.
pub fn response(e: &RequestError) -> Response {
    let status = status_of(e);
    let mut r = json_response(status, &body_of(e));
    let h = r.headers_mut();
    if let Some(after) = e.retry_after() {
        h.insert(header::RETRY_AFTER, HeaderValue::from(retry_secs(after)));
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        h.insert(RETRY_AFTER_MS, HeaderValue::from(ms));
    }
    if let Some(limit) = e.limit() {
        h.insert(LIMIT_HEADER, HeaderValue::from_static(limit));
    }
    r
}

/// An answer for what is wrong with the HTTP request itself rather than its fields: a body
/// over the limit (413), a path or method this API does not have.
pub fn plain(status: StatusCode, code: &'static str, message: String) -> Response {
    let body = json!({
        "error": {
            "message": message,
            "type": type_of(status),
            "param": null,
            "code": code,
        }
    });
    json_response(status, &body)
}

/// A JSON answer.
pub fn json_response(status: StatusCode, v: &serde_json::Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Whole seconds to wait, at least 1 (a `Retry-After` of 0 invites a busy loop).
fn retry_secs(d: Duration) -> u64 {
    d.as_millis()
        .div_ceil(1000)
        .max(1)
        .try_into()
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_gets_its_status_type_and_code() {
        let cases = [
            (
                RequestError::InvalidField {
                    field: "temperature",
                    message: "bad".into(),
                },
                400,
                "invalid_request_error",
                Some("temperature"),
            ),
            (
                RequestError::OverLimit {
                    key: "limits.max_tokens_cap",
                    message: "too many".into(),
                },
                400,
                "invalid_request_error",
                Some("max_tokens"),
            ),
            (
                RequestError::UnknownModel("no".into()),
                404,
                "invalid_request_error",
                Some("model"),
            ),
            (
                RequestError::Unauthenticated("who".into()),
                401,
                "authentication_error",
                None,
            ),
            (
                RequestError::PermissionDenied("no".into()),
                403,
                "permission_error",
                None,
            ),
            (
                RequestError::QueueFull("full".into()),
                429,
                "rate_limit_error",
                None,
            ),
            (RequestError::ShuttingDown, 503, "server_error", None),
            (
                RequestError::Audit(appl_audit::AuditError::Unavailable("disk".into())),
                503,
                "server_error",
                None,
            ),
        ];
        for (e, status, ty, param) in cases {
            let b = body_of(&e);
            assert_eq!(status_of(&e).as_u16(), status, "{e}");
            assert_eq!(b["error"]["type"], ty, "{e}");
            assert_eq!(b["error"]["param"].as_str(), param, "{e}");
            assert_eq!(b["error"]["message"], e.to_string());
        }
    }

    #[test]
    fn refusals_say_when_to_retry() {
        let r = response(&RequestError::QueueFull("full".into()));
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(r.headers()[RETRY_AFTER_MS], "1000");
        assert_eq!(retry_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_secs(Duration::ZERO), 1);
        let r = response(&RequestError::Invalid("bad".into()));
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }
}
