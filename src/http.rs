//! The HTTP edge: adapts axum to `twilio::signature` and `ingest`, and nothing more.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, OriginalUri, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::SecretString;
use tower::limit::ConcurrencyLimitLayer;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::field::Empty;

use crate::ingest::{Arrival, Ingestor};
use crate::supabase::Supabase;
use crate::twilio::{signature, PublicUrl};

/// Far above any Twilio webhook (a Conversations message with attributes is a few KiB).
pub const BODY_LIMIT: usize = 256 * 1024;
pub const WEBHOOK_PATH: &str = "/webhooks/twilio";
/// Webhooks handled at once; more wait for a slot (their connections are not refused or answered
/// with an error, which Twilio would not retry), so memory stays bounded under a flood.
const MAX_IN_FLIGHT: usize = 2_048;
/// A client that trickles its body cannot hold a connection longer than this.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
const EMPTY_TWIML: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response></Response>"#;

/// Shared by every request behind one `Arc`: axum clones the state for each request, and a clone
/// of these fields would copy the Supabase client's URL and headers each time.
pub(crate) struct AppState {
    pub ingestor: Ingestor,
    pub supabase: Supabase,
    pub verifier: Arc<Verifier>,
    pub metrics: PrometheusHandle,
}

/// What a request is checked against before anything is parsed or stored.
pub(crate) struct Verifier {
    pub public_url: PublicUrl,
    pub tokens: Vec<SecretString>,
    pub account_sid: Option<String>,
}

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(twilio_webhook).layer(ConcurrencyLimitLayer::new(MAX_IN_FLIGHT)))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(RequestBodyTimeoutLayer::new(BODY_TIMEOUT))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(request_span))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(CatchPanicLayer::new()),
        )
        .with_state(Arc::new(state))
}

fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
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
    body: Bytes,
) -> Response {
    let arrival = Arrival::now();
    let received = arrival.instant;
    let span = tracing::Span::current();
    let path_and_query = uri.path_and_query().map_or(WEBHOOK_PATH, |p| p.as_str());
    let signature = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok());
    let verifier = &state.verifier;

    let params = match signature::verify(&verifier.public_url, path_and_query, signature, &body, &verifier.tokens) {
        Ok(params) => params,
        Err(reason) => {
            span.record("outcome", "forged");
            tracing::warn!(%reason, url = %verifier.public_url.join(path_and_query), "refused a webhook");
            return finish(received, "forged", (StatusCode::FORBIDDEN, "invalid Twilio signature\n").into_response());
        }
    };
    let account_sid = params.get("AccountSid");
    span.record("account_sid", account_sid.unwrap_or(""));
    if let Some(expected) = &verifier.account_sid {
        if account_sid != Some(expected.as_str()) {
            span.record("outcome", "wrong_account");
            tracing::warn!(account_sid, "refused a webhook signed for another account");
            return finish(received, "wrong_account", (StatusCode::FORBIDDEN, "wrong account\n").into_response());
        }
    }
    if let Some(sid) = crate::twilio::webhook::message_sid(&params) {
        span.record("message_sid", sid);
    }

    match state.ingestor.ingest(&params, arrival).await {
        Ok((outcome, message)) => {
            if let Some(message) = message {
                span.record("kind", message.kind.as_str());
            }
            span.record("outcome", outcome.as_str());
            tracing::info!(outcome = outcome.as_str(), "webhook handled");
            finish(received, outcome.as_str(), twiml())
        }
        Err(e) => {
            // Neither Supabase nor the disk took it: say so, so a Twilio retry (where the URL asks
            // for one) has a chance, rather than pretend it is safe.
            span.record("outcome", "failed");
            tracing::error!(error = %e, "webhook not durable");
            finish(received, "failed", (StatusCode::SERVICE_UNAVAILABLE, "try again\n").into_response())
        }
    }
}

fn finish(received: Instant, outcome: &'static str, response: Response) -> Response {
    metrics::counter!("webhooks_total", "outcome" => outcome).increment(1);
    metrics::histogram!("webhook_duration_seconds", "outcome" => outcome).record(received.elapsed().as_secs_f64());
    response
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
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {what}: {e}\n{hint}\nspool_depth {depth}\n")).into_response()
        }
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    metrics::gauge!("spool_depth").set(state.ingestor.spool_depth() as f64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}
