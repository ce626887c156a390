//! The HTTP edge: adapts axum to `twilio::signature` and `ingest`, and nothing more.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::field::Empty;

use crate::ingest::{Arrival, Ingestor, Outcome};
use crate::supabase::Supabase;
use crate::twilio::{Credentials, PublicUrl, Refusal};

/// Far above any Twilio webhook (a Conversations message with attributes is a few KiB).
pub const BODY_LIMIT: usize = 256 * 1024;
pub const WEBHOOK_PATH: &str = "/webhooks/twilio";
/// Genuine webhooks handled at once; more wait for a slot (their connections are not refused or
/// answered with an error, which Twilio would not retry), so memory stays bounded under a flood.
/// A slot is taken only once the body has arrived and its signature is checked, so slow or forged
/// requests cannot use up the capacity genuine webhooks need.
const MAX_IN_FLIGHT: usize = 2_048;
/// The whole body must arrive within this long from the end of the headers, however it trickles:
/// a fixed budget, not one that restarts with every byte.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `X-Request-Id` taken from a client; a longer or odd one is replaced by a fresh one.
const MAX_REQUEST_ID: usize = 64;
/// Longest URL or reason one log line carries from a request.
const MAX_LOGGED: usize = 256;
const EMPTY_TWIML: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response></Response>"#;

/// Shared by every request behind one `Arc`: axum clones the state for each request, and a clone
/// of these fields would copy the Supabase client's URL and headers each time.
pub(crate) struct AppState {
    pub ingestor: Ingestor,
    pub supabase: Supabase,
    pub public_url: PublicUrl,
    pub credentials: Credentials,
    pub metrics: PrometheusHandle,
    pub slots: Semaphore,
}

pub(crate) fn slots() -> Semaphore {
    Semaphore::new(MAX_IN_FLIGHT)
}

/// The public port: what Twilio calls, and a liveness probe for Fly's proxy.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(twilio_webhook))
        .route("/healthz", get(healthz))
        .layer(
            ServiceBuilder::new()
                .layer(axum::middleware::map_request(drop_unfit_request_id))
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(request_span))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(CatchPanicLayer::new()),
        )
        .with_state(state)
}

/// The operations port: metrics and readiness, which cost Supabase calls and tell internals, for
/// Fly's checks and scraper on the private network, never the internet.
pub(crate) fn ops_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(CatchPanicLayer::new())
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// A client's `X-Request-Id` is echoed back and logged, so only a short, plain one is kept; any
/// other is dropped, and a fresh one is made in its place.
async fn drop_unfit_request_id<B>(mut request: Request<B>) -> Request<B> {
    let fit = |id: &[u8]| {
        (1..=MAX_REQUEST_ID).contains(&id.len()) && id.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    };
    if request.headers().get("x-request-id").is_some_and(|id| !fit(id.as_bytes())) {
        request.headers_mut().remove("x-request-id");
    }
    request
}

/// At most [`MAX_LOGGED`] characters of something a client sent, for a log line.
fn clip(text: &str) -> &str {
    crate::text::clip(text, MAX_LOGGED)
}

fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %clip(request.uri().path()),
        request_id,
        message_sid = Empty,
        account_sid = Empty,
        kind = Empty,
        outcome = Empty,
    )
}

fn twiml() -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"))], EMPTY_TWIML).into_response()
}

async fn twilio_webhook(
    State(state): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let arrival = Arrival::now();
    let body = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, BODY_LIMIT)).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => return finish(arrival, Answered::TooLarge),
        Err(_) => {
            tracing::warn!(?BODY_TIMEOUT, "the body did not arrive in time");
            return finish(arrival, Answered::SlowBody);
        }
    };
    let path_and_query = uri.path_and_query().map_or(WEBHOOK_PATH, |p| p.as_str());
    let signature = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok());
    let settings = headers.get("x-twilio-webhooks-signature-settings").and_then(|v| v.to_str().ok());

    let params = match state.credentials.verify(&state.public_url, path_and_query, signature, settings, &body) {
        Ok(params) => params,
        Err(refusal) => {
            let url = state.public_url.join(path_and_query);
            tracing::warn!(reason = %clip(&refusal.to_string()), url = %clip(&url), "refused a webhook");
            let answered = match refusal {
                Refusal::WrongAccount(_) => Answered::WrongAccount,
                _ => Answered::Forged,
            };
            return finish(arrival, answered);
        }
    };
    let span = tracing::Span::current();
    span.record("account_sid", clip(params.get("AccountSid").unwrap_or("")));
    // Genuine from here on: only now does the request take one of the slots genuine webhooks share.
    let Ok(_slot) = state.slots.acquire().await else { return finish(arrival, Answered::NotDurable) };
    if let Some(sid) = crate::twilio::webhook::message_sid(&params) {
        span.record("message_sid", sid);
    }

    match state.ingestor.ingest(&params, arrival).await {
        Ok((outcome, message)) => {
            if let Some(message) = message {
                span.record("kind", message.kind.as_str());
            }
            tracing::info!(outcome = outcome.as_str(), "webhook handled");
            finish(arrival, Answered::Durable(outcome))
        }
        Err(e) => {
            // Neither Supabase nor the disk took it: say so, so a Twilio retry (where the URL asks
            // for one) has a chance, rather than pretend it is safe.
            tracing::error!(error = %e, "webhook not durable");
            finish(arrival, Answered::NotDurable)
        }
    }
}

/// How a webhook was answered: the `outcome` of its span and of `webhooks_total`.
#[derive(Clone, Copy, Debug)]
enum Answered {
    /// A 200: the message is where the outcome says (or, if ignored, needs to be nowhere).
    Durable(Outcome),
    /// A 403: the signature does not check.
    Forged,
    /// A 403: genuine, from an account this service does not take webhooks for.
    WrongAccount,
    /// A 413.
    TooLarge,
    /// A 408: the body did not arrive in time.
    SlowBody,
    /// A 503: neither Supabase nor the spool took the message.
    NotDurable,
}

impl Answered {
    fn label(self) -> &'static str {
        match self {
            Answered::Durable(outcome) => outcome.as_str(),
            Answered::Forged => "forged",
            Answered::WrongAccount => "wrong_account",
            Answered::TooLarge => "too_large",
            Answered::SlowBody => "slow_body",
            Answered::NotDurable => "failed",
        }
    }

    fn response(self) -> Response {
        match self {
            Answered::Durable(_) => twiml(),
            Answered::Forged => (StatusCode::FORBIDDEN, "invalid Twilio signature\n").into_response(),
            Answered::WrongAccount => (StatusCode::FORBIDDEN, "wrong account\n").into_response(),
            Answered::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body too large\n").into_response(),
            Answered::SlowBody => (StatusCode::REQUEST_TIMEOUT, "body too slow\n").into_response(),
            Answered::NotDurable => (StatusCode::SERVICE_UNAVAILABLE, "try again\n").into_response(),
        }
    }
}

/// Records how the webhook that arrived at `arrival` was answered, and answers it so.
fn finish(arrival: Arrival, answered: Answered) -> Response {
    let outcome = answered.label();
    tracing::Span::current().record("outcome", outcome);
    metrics::counter!("webhooks_total", "outcome" => outcome).increment(1);
    metrics::histogram!("webhook_duration_seconds", "outcome" => outcome)
        .record(arrival.instant.elapsed().as_secs_f64());
    answered.response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let depth = state.ingestor.spool_depth();
    // The spool is what keeps the promise while Supabase is away: one that cannot take a message
    // makes the service unready even while Supabase answers.
    if let Err(why) = state.ingestor.spool_health().await {
        tracing::warn!(%why, "not ready");
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\nspool_depth {depth}\n")).into_response();
    }
    match state.supabase.probe(Duration::from_secs(2)).await {
        Ok(()) => format!("ready\nspool_depth {depth}\n").into_response(),
        Err((what, e)) => {
            tracing::warn!(%what, error = %e, "not ready");
            let hint = e.hint();
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {what}: {e}\n{hint}\nspool_depth {depth}\n"))
                .into_response()
        }
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    metrics::gauge!("spool_depth").set(state.ingestor.spool_depth() as f64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}
