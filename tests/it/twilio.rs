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

/// One request as it reaches the service, signed over `signed_url`: whether each official library
/// and the service accept it.
struct SignedRequest {
    public_url: &'static str,
    path_and_query: &'static str,
    signed_url: String,
    /// A JSON body (the URL then carries `bodySHA256`), or form params.
    json: Option<String>,
}

const LIB_TOKEN: &str = "12345678901234567890123456789012";

fn library_params() -> Params {
    Params::from_pairs([
        ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
        ("AccountSid", "AC00000000000000000000000000000001"),
        ("From", "+14155550100"),
        ("Body", "it's ça & 100% ✓"),
    ])
}

/// Runs `program` with `script`, the cases on stdin as JSON; returns its verdict for each.
fn library_verdicts(program: &std::path::Path, args: &[&str], cases: &serde_json::Value) -> Vec<bool> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/install-deps installs it)", program.display()));
    child.stdin.take().unwrap().write_all(cases.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{} failed", program.display());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The service accepts exactly what twilio-python 9.13 or twilio-node 6.3 accepts, nothing more:
/// each case is signed over one spelling of the URL (or body) and checked by both libraries,
/// installed by `scripts/install-deps`, and by the service's own verifier.
#[test]
fn signatures_are_accepted_exactly_as_twilio_python_or_twilio_node_accepts_them() {
    let tools = devstack::repo_root().join(".tools/workers");
    let body = r#"{"MessageSid":"SM0123456789abcdef0123456789abcdef","Body":"hi"}"#;
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
    let json_path: &'static str = Box::leak(format!("/webhooks/twilio?bodySHA256={hash}").into_boxed_str());
    let json_upper: &'static str =
        Box::leak(format!("/webhooks/twilio?bodySHA256={}", hash.to_uppercase()).into_boxed_str());
    let case = |public_url, path_and_query, signed_url: &str| SignedRequest {
        public_url,
        path_and_query,
        signed_url: signed_url.to_owned(),
        json: None,
    };
    let mut cases = vec![
        case("https://example.com", "/webhooks/twilio", "https://example.com/webhooks/twilio"),
        case("https://example.com", "/webhooks/twilio", "https://example.com:443/webhooks/twilio"),
        case("https://example.com", "/webhooks/twilio", "https://example.com:8443/webhooks/twilio"),
        case("https://example.com", "/webhooks/twilio", "http://example.com/webhooks/twilio"),
        case("https://example.com:443", "/webhooks/twilio", "https://example.com/webhooks/twilio"),
        case("https://example.com:8443", "/webhooks/twilio", "https://example.com:8443/webhooks/twilio"),
        case("https://example.com:8443", "/webhooks/twilio", "https://example.com/webhooks/twilio"),
        case("https://example.com:8443", "/webhooks/twilio", "https://example.com:443/webhooks/twilio"),
        case("http://example.com:8080", "/webhooks/twilio", "http://example.com:80/webhooks/twilio"),
        case("http://example.com", "/webhooks/twilio", "http://example.com:80/webhooks/twilio"),
        case(
            "https://example.com",
            "/webhooks/twilio?name=o'brien",
            "https://example.com/webhooks/twilio?name=o'brien",
        ),
        case(
            "https://example.com",
            "/webhooks/twilio?name=o'brien",
            "https://example.com/webhooks/twilio?name=o%27brien",
        ),
        case(
            "https://example.com",
            "/webhooks/twilio?name=o'brien",
            "https://example.com:443/webhooks/twilio?name=o%27brien",
        ),
        case(
            "https://example.com",
            "/webhooks/twilio?name=o%27brien",
            "https://example.com/webhooks/twilio?name=o'brien",
        ),
        case("https://example.com", "/webhooks/twilio?a=b+c", "https://example.com/webhooks/twilio?a=b%20c"),
        case(
            "https://example.com",
            "/webhooks/twilio?a=%7e&b=1&a=2",
            "https://example.com/webhooks/twilio?a=~&a=2&b=1",
        ),
        case("https://example.com", "/webhooks/twilio?a=1", "https://example.com/webhooks/twilio?a=2"),
        case("https://example.com", "/webhooks/twilio?", "https://example.com/webhooks/twilio"),
        case("https://example.com", "/webhooks/twilio?", "https://example.com/webhooks/twilio?"),
        case("https://Example.COM", "/webhooks/twilio", "https://example.com/webhooks/twilio"),
        case("https://example.com", "/webhooks/twilio/", "https://example.com/webhooks/twilio"),
        case("https://example.com", "/webhooks/./twilio", "https://example.com/webhooks/twilio"),
        case("https://example.com", "/webhooks/twilio?x=%zz", "https://example.com/webhooks/twilio?x=%25zz"),
    ];
    for (path, signed) in [(json_path, json_path), (json_upper, json_upper), (json_path, json_upper)] {
        cases.push(SignedRequest {
            public_url: "https://example.com",
            path_and_query: path,
            signed_url: format!("https://example.com{signed}"),
            json: Some(body.to_owned()),
        });
    }
    let params = library_params();
    let form_params: serde_json::Map<String, serde_json::Value> =
        params.pairs().iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    let requests: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| {
            let signed_params = if c.json.is_some() { Params::default() } else { params.clone() };
            let url = twilio_ingest::twilio::PublicUrl::parse(c.public_url).unwrap().join(c.path_and_query);
            serde_json::json!({
                "token": LIB_TOKEN,
                "url": url,
                "signature": twilio_ingest::twilio::signature::sign(LIB_TOKEN, &c.signed_url, &signed_params),
                "params": form_params,
                "body": c.json,
            })
        })
        .collect();
    let requests = serde_json::Value::Array(requests);
    let node = library_verdicts(
        std::path::Path::new("node"),
        &[
            "-e",
            r#"
            const w = require(process.argv[1] + "/js/node_modules/twilio/lib/webhooks/webhooks.js");
            const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
            console.log(JSON.stringify(cases.map((c) => {
              try {
                return c.body === null ? w.validateRequest(c.token, c.signature, c.url, c.params)
                                       : w.validateRequestWithBody(c.token, c.signature, c.url, c.body);
              } catch (e) { return false; }
            })));"#,
            tools.to_str().unwrap(),
        ],
        &requests,
    );
    let python = library_verdicts(
        &tools.join("py/bin/python"),
        &[
            "-c",
            r#"
import json, sys
from twilio.request_validator import RequestValidator
cases = json.load(sys.stdin)
print(json.dumps([RequestValidator(c["token"]).validate(c["url"], c["body"] if c["body"] is not None else c["params"], c["signature"]) for c in cases]))
"#,
        ],
        &requests,
    );
    let token = secrecy::SecretString::from(LIB_TOKEN.to_owned());
    let keys = [(Algorithm::HmacSha1, &token)];
    let mut disagreements = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let public = twilio_ingest::twilio::PublicUrl::parse(c.public_url).unwrap();
        let sig = requests[i]["signature"].as_str().unwrap();
        // The service sees the request target without the fragment, as HTTP carries it.
        let target = c.path_and_query.split('#').next().unwrap();
        let body = match &c.json {
            Some(json) => json.clone().into_bytes(),
            None => form(&params).into_bytes(),
        };
        let ours = twilio_ingest::twilio::signature::verify(&public, target, Some(sig), &body, &keys).is_ok();
        let libraries = python[i] || node[i];
        if ours != libraries {
            disagreements.push(format!(
                "{} + {} signed over {}: service {ours}, python {}, node {}",
                c.public_url, c.path_and_query, c.signed_url, python[i], node[i]
            ));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    // The corpus reaches both sides of the union: something only twilio-node takes, and
    // something both refuse.
    assert!((0..cases.len()).any(|i| node[i] && !python[i]), "no case that only twilio-node accepts");
    assert!((0..cases.len()).any(|i| !node[i] && !python[i]), "no case both refuse");
}
