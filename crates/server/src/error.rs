//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`
//! with the matching HTTP status. Every failure the API can produce goes
//! through [`ApiError`]; a handler never panics on input.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use switchyard_engine::EngineError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after_s: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// A bad value for one request field.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.into()),
            ..Self::invalid(message)
        }
    }

    pub fn context_length(ctx: usize, prompt: usize, max_tokens: usize) -> Self {
        Self::context_exceeded(ctx, prompt, max_tokens, "")
    }

    /// The prompt provably has at least `at_least` tokens (counted without
    /// tokenizing it), too many for the window.
    pub fn context_length_at_least(ctx: usize, at_least: usize, max_tokens: usize) -> Self {
        Self::context_exceeded(ctx, at_least, max_tokens, "at least ")
    }

    fn context_exceeded(ctx: usize, prompt: usize, max_tokens: usize, bound: &str) -> Self {
        ApiError {
            code: Some("context_length_exceeded".into()),
            param: Some("messages".into()),
            ..Self::invalid(format!(
                "This model's maximum context length is {ctx} tokens. However, you requested {bound}{} tokens ({bound}{prompt} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
                prompt + max_tokens
            ))
        }
    }

    pub fn model_not_found(model: &str) -> Self {
        ApiError {
            param: Some("model".into()),
            code: Some("model_not_found".into()),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{model}` does not exist or you do not have access to it."),
            )
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    pub fn unauthorized() -> Self {
        ApiError {
            code: Some("invalid_api_key".into()),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "Incorrect API key provided.",
            )
        }
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("Request body is larger than the limit of {limit} bytes."),
        )
    }

    pub fn overloaded(model: &str, waiting: usize) -> Self {
        ApiError {
            retry_after_s: Some(1),
            code: Some("overloaded".into()),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                format!(
                    "Model `{model}` is overloaded ({waiting} requests waiting). Retry shortly."
                ),
            )
        }
    }

    /// Every routing candidate failed.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            code: Some("all_candidates_failed".into()),
            retry_after_s: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
        }
    }

    /// Temporarily unable to take the request (a full queue): retry soon.
    pub fn busy(message: impl Into<String>) -> Self {
        ApiError {
            retry_after_s: Some(1),
            code: Some("overloaded".into()),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
        }
    }

    pub fn shutting_down() -> Self {
        ApiError {
            retry_after_s: Some(1),
            code: Some("shutting_down".into()),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "The server is shutting down; retry on another replica.",
            )
        }
    }

    /// A model named in the catalog that has not finished loading.
    pub fn model_loading(model: &str) -> Self {
        ApiError {
            retry_after_s: Some(5),
            code: Some("model_loading".into()),
            param: Some("model".into()),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                format!("Model `{model}` is still loading. Retry shortly."),
            )
        }
    }

    /// A model's load failed (a corrupt or missing file, not enough memory
    /// on the device); requests do not retry it for a while.
    pub fn model_load_failed(model: &str, why: &str) -> Self {
        ApiError {
            retry_after_s: Some(30),
            code: Some("model_load_failed".into()),
            param: Some("model".into()),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                format!("Model `{model}` failed to load: {why}"),
            )
        }
    }

    /// The pool cannot make room for a model: everything resident is pinned
    /// or busy.
    pub fn no_memory(model: &str, why: String) -> Self {
        ApiError {
            retry_after_s: Some(5),
            code: Some("insufficient_memory".into()),
            param: Some("model".into()),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                format!("Model `{model}` cannot be loaded now: {why}."),
            )
        }
    }

    /// A remote model refused the request (a 4xx): its status and message.
    pub fn upstream_refused(status: StatusCode, model: &str, message: &str) -> Self {
        ApiError {
            code: Some("upstream_refused".into()),
            ..Self::new(
                status,
                "invalid_request_error",
                format!("The remote model `{model}` refused the request: {message}"),
            )
        }
    }

    /// A remote model failed (unreachable, 5xx, an unreadable answer).
    pub fn bad_gateway(model: &str, why: &str) -> Self {
        ApiError {
            code: Some("upstream_error".into()),
            retry_after_s: Some(1),
            ..Self::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                format!("The remote model `{model}` failed: {why}"),
            )
        }
    }

    /// The resource is not in a state that allows the operation.
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError {
            code: Some("conflict".into()),
            ..Self::new(StatusCode::CONFLICT, "invalid_request_error", message)
        }
    }

    pub fn rate_limited(retry_after_s: u64) -> Self {
        ApiError {
            retry_after_s: Some(retry_after_s),
            code: Some("rate_limit_exceeded".into()),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!("Rate limit reached for this API key. Retry in {retry_after_s} s."),
            )
        }
    }

    pub fn timeout(after: std::time::Duration) -> Self {
        Self::gateway_timeout(format!(
            "The request did not finish within {} s.",
            after.as_secs_f64()
        ))
    }

    /// A stream that produced nothing for `after`.
    pub fn stream_idle(after: std::time::Duration) -> Self {
        Self::gateway_timeout(format!(
            "The stream produced nothing for {} s.",
            after.as_secs_f64()
        ))
    }

    fn gateway_timeout(message: String) -> Self {
        ApiError {
            code: Some("timeout".into()),
            ..Self::new(StatusCode::GATEWAY_TIMEOUT, "server_error", message)
        }
    }

    /// Is this the request's own fault (the same on any model), rather than
    /// the serving side's (overload, a stopped engine)?
    pub fn is_client_error(&self) -> bool {
        self.status.is_client_error() && self.status != StatusCode::TOO_MANY_REQUESTS
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// Engine errors keep their kind: a bad request is a 400, a stopped engine a
/// 503 to retry, a failure inside the engine a 500.
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::InvalidRequest(m) => ApiError::invalid(m),
            EngineError::Tokenizer(m) | EngineError::Template(m) => {
                ApiError::invalid_param("messages", m)
            }
            EngineError::Stopped => ApiError::busy("The model's engine has stopped."),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
