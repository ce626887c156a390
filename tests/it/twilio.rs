//! Twilio's whole signing surface, end to end: SharedKeys, subaccounts with their own tokens, and
//! webhooks that are not messages.

use devstack::{Grants, KeyKind};
use twilio_ingest::twilio::signature::{sign_with, Algorithm};
use twilio_ingest::twilio::Params;
use twilio_ingest::WEBHOOK_PATH;

use crate::helpers::*;

const SUB: &str = "AC00000000000000000000000000000002";
const SUB_TOKEN: &str = "22222222222222222222222222222222";
const SHARED: &str = "shared-key-secret-0123456789";

fn from_account(account: &str) -> Params {
    let pairs = sms(&unique_phone(), "from a subaccount").pairs().to_vec();
    Params::from_pairs(pairs.into_iter().map(|(k, v)| if k == "AccountSid" { (k, account.to_owned()) } else { (k, v) }))
}

async fn post(app: &TestApp, params: &Params, signature: &str, settings: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url())
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", signature)
        .body(form(params));
    if let Some(settings) = settings {
        request = request.header("X-Twilio-Webhooks-Signature-Settings", settings);
    }
    request.send().await.unwrap()
}

fn stored(stack: &devstack::Stack, params: &Params) -> i64 {
    jobs_with_sid(stack, &sid_of(params))
}

#[tokio::test]
async fn a_webhook_signed_with_a_shared_key_is_taken_with_either_algorithm() {
    let stack = shared_stack(Grants::None);
    let extra = [("TWILIO_SHARED_KEYS", "KSold=old-secret-456,KS0123=shared-key-secret-0123456789")];
    let app = spawn_app_at(&stack.url(), KeyKind::Secret, &temp_dir("spool"), Default::default(), &extra).await;
    let url = format!("{PUBLIC_URL}{WEBHOOK_PATH}");
    for (name, algorithm) in [("HMAC_SHA1", Algorithm::HmacSha1), ("HMAC_SHA256", Algorithm::HmacSha256)] {
        for (key, secret) in [("KS0123", SHARED), ("KSold", "old-secret-456")] {
            let params = sms(&unique_phone(), "shared key");
            let signature = sign_with(algorithm, secret, &url, &params);
            let settings = format!("key={key},algorithm={name}");
            assert_eq!(post(&app, &params, &signature, Some(&settings)).await.status(), 200, "{key} {name}");
            assert_eq!(stored(stack, &params), 1, "{key} {name}");
        }
    }
    // A key the service does not hold, or an algorithm it does not know: refused, nothing written.
    let params = sms(&unique_phone(), "unknown key");
    let signature = sign_with(Algorithm::HmacSha256, SHARED, &url, &params);
    for settings in ["key=KSunknown,algorithm=HMAC_SHA256", "key=KS0123,algorithm=HMAC_SHA512"] {
        assert_eq!(post(&app, &params, &signature, Some(settings)).await.status(), 403, "{settings}");
    }
    assert_eq!(stored(stack, &params), 0);
    app.stop().await;
}

#[tokio::test]
async fn each_account_signs_with_its_own_token_and_cannot_sign_for_another() {
    let stack = shared_stack(Grants::None);
    let extra = [
        ("TWILIO_ACCOUNTS", "AC00000000000000000000000000000002:22222222222222222222222222222222"),
        ("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000000"),
    ];
    let app = spawn_app_at(&stack.url(), KeyKind::Secret, &temp_dir("spool"), Default::default(), &extra).await;
    let url = format!("{PUBLIC_URL}{WEBHOOK_PATH}");
    // The subaccount with its token, the main account with the main token.
    let sub = from_account(SUB);
    assert_eq!(post(&app, &sub, &sign_with(Algorithm::HmacSha1, SUB_TOKEN, &url, &sub), None).await.status(), 200);
    assert_eq!(stored(stack, &sub), 1);
    let main = sms(&unique_phone(), "main account");
    assert_eq!(app.post_signed(&main).await.status(), 200);
    assert_eq!(stored(stack, &main), 1);
    // Signed with one account's token, claiming the other.
    let forged = from_account(SUB);
    assert_eq!(app.post_with_signature(&forged, Some(&sign(&forged))).await.status(), 403);
    let other = sms(&unique_phone(), "claims main, signed by sub");
    assert_eq!(post(&app, &other, &sign_with(Algorithm::HmacSha1, SUB_TOKEN, &url, &other), None).await.status(), 403);
    // An account that is neither.
    let stranger = from_account("AC00000000000000000000000000000009");
    assert_eq!(app.post_signed(&stranger).await.status(), 403);
    assert_eq!(stored(stack, &forged) + stored(stack, &other) + stored(stack, &stranger), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_voice_call_or_a_status_callback_writes_nothing() {
    let stack = shared_stack(Grants::None);
    let app = spawn_app(stack, KeyKind::Secret).await;
    let call = unique("CA");
    let voice = Params::from_pairs([
        ("CallSid", call.as_str()),
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("From", "+14155550100"),
        ("To", "+15005550001"),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
    ]);
    let status = Params::from_pairs([
        ("MessageSid", unique("SM").as_str()),
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("MessageStatus", "delivered"),
    ]);
    for params in [voice, status] {
        assert_eq!(app.post_signed(&params).await.status(), 200);
    }
    assert_eq!(count(stack, &format!("select count(*) from dlq_jobs where payload->>'CallSid' = '{call}'")), 0);
    app.stop().await;
}

#[test]
fn a_malformed_signing_variable_stops_start_up_in_one_line_without_its_secret() {
    let stack = shared_stack(Grants::None);
    for (var, value) in [
        ("TWILIO_SHARED_KEYS", "KS1"),
        ("TWILIO_SHARED_KEYS", "KS1=topsecretvalue,KS1=topsecretvalue"),
        ("TWILIO_ACCOUNTS", "AC00000000000000000000000000000002=topsecretvalue"),
        ("TWILIO_ACCOUNTS", "AC123:topsecretvalue0123456789abcdef"),
    ] {
        let out = service_command(&stack.url(), KeyKind::Secret, &temp_dir("spool"), devstack::free_port())
            .env(var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&format!("{var} is invalid")), "{stderr}");
        assert!(!stderr.contains("topsecretvalue"), "a secret in the error: {stderr}");
    }
}
