//! What a Twilio webhook becomes in Supabase: the end-to-end behaviour, on every kind of stack.

use std::time::Duration;

use devstack::{jwt, Grants, KeyKind, Stack, PUBLISHABLE_KEY};
use twilio_ingest::ingest::{Arrival, Outcome, ReceivedAt};
use twilio_ingest::supabase::{EncodedJob, NewJob};
use twilio_ingest::twilio::Params;

use crate::helpers::*;
use crate::on_every_stack;

async fn assert_twiml(response: reqwest::Response) {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/xml");
    assert_eq!(response.text().await.unwrap(), r#"<?xml version="1.0" encoding="UTF-8"?><Response></Response>"#);
}

on_every_stack!(a_dm_via_sms_creates_the_user_and_a_dm_job);
async fn a_dm_via_sms_creates_the_user_and_a_dm_job(stack: &Stack, app: &TestApp) {
    let phone = unique_phone();
    let params = sms(&phone, "hello there");
    let sid = sid_of(&params);
    assert_twiml(app.post_signed(&params).await).await;

    let job = read_column(stack, &format!(
        "select concat_ws('|', user_id, user_phone, source_type, source_channel_id, content_type, status, payload->>'Body', payload->>'SmsSid')
         from jobs where message_sid = '{sid}'"
    ));
    assert_eq!(job, vec![Some(format!("{phone}|{phone}|dm|{phone}|text|pending|hello there|{sid}"))]);
    assert_eq!(
        count(stack, &format!("select count(*) from users where phone_number = '{phone}' and first_name is null")),
        1
    );
}

on_every_stack!(a_whatsapp_dm_strips_the_prefix_and_names_the_user);
async fn a_whatsapp_dm_strips_the_prefix_and_names_the_user(stack: &Stack, app: &TestApp) {
    let phone = unique_phone();
    let wa = format!("whatsapp:{phone}");
    let mut pairs = sms(&wa, "hola").pairs().to_vec();
    pairs.push(("ProfileName".into(), "Ada".into()));
    pairs.push(("WaId".into(), phone[1..].to_owned()));
    let params = Params::from_pairs(pairs);
    let sid = sid_of(&params);
    assert_twiml(app.post_signed(&params).await).await;

    assert_eq!(
        read_column(stack, &format!("select first_name from users where phone_number = '{phone}'")),
        vec![Some("Ada".into())]
    );
    let stored: Vec<(String, String)> =
        read_rows(stack, &format!("select user_phone, source_channel_id from jobs where message_sid = '{sid}'"));
    assert_eq!(stored, [(phone.clone(), wa.clone())]);

    // A later profile name does not clobber the one the user has.
    let mut again = sms(&wa, "again").pairs().to_vec();
    again.push(("ProfileName".into(), "Someone Else".into()));
    assert_twiml(app.post_signed(&Params::from_pairs(again)).await).await;
    assert_eq!(
        read_column(stack, &format!("select first_name from users where phone_number = '{phone}'")),
        vec![Some("Ada".into())]
    );
    assert_eq!(count(stack, &format!("select count(*) from jobs where user_id = '{phone}'")), 2);
}

on_every_stack!(a_conversations_message_is_a_group_job_in_its_conversation);
async fn a_conversations_message_is_a_group_job_in_its_conversation(stack: &Stack, app: &TestApp) {
    let phone = unique_phone();
    let conversation = unique("CH");
    let params = group_message(&conversation, &phone, "hi all");
    let sid = sid_of(&params);
    assert_twiml(app.post_signed(&params).await).await;
    assert_eq!(
        read_column(stack, &format!("select concat_ws('|', source_type, source_channel_id, user_id, content_type) from jobs where message_sid = '{sid}'")),
        vec![Some(format!("group|{conversation}|{phone}|text"))]
    );
}

on_every_stack!(other_conversations_events_are_acknowledged_and_write_nothing);
async fn other_conversations_events_are_acknowledged_and_write_nothing(stack: &Stack, app: &TestApp) {
    let conversation = unique("CH");
    let params = Params::from_pairs([("EventType", "onConversationAdded"), ("ConversationSid", conversation.as_str())]);
    assert_twiml(app.post_signed(&params).await).await;
    let in_payload = format!("select count(*) from {{}} where payload->>'ConversationSid' = '{conversation}'");
    assert_eq!(count(stack, &in_payload.replace("{}", "jobs")), 0);
    assert_eq!(count(stack, &in_payload.replace("{}", "dlq_jobs")), 0);
}

on_every_stack!(the_same_message_sid_sent_three_times_makes_one_job);
async fn the_same_message_sid_sent_three_times_makes_one_job(stack: &Stack, app: &TestApp) {
    let params = sms(&unique_phone(), "retry me");
    let sid = sid_of(&params);
    // Twice in sequence, then concurrently, as Twilio retries and re-sends can arrive.
    assert_twiml(app.post_signed(&params).await).await;
    let (a, b) = tokio::join!(app.post_signed(&params), app.post_signed(&params));
    assert_twiml(a).await;
    assert_twiml(b).await;
    assert_eq!(jobs_with_sid(stack, &sid), 1);
}

on_every_stack!(a_twilio_retry_is_told_apart_as_a_duplicate);
async fn a_twilio_retry_is_told_apart_as_a_duplicate(_stack: &Stack, app: &TestApp) {
    let params = sms(&unique_phone(), "once");
    let first = app.ingestor.ingest(&params, Arrival::now()).await.unwrap().0;
    let retry = app.ingestor.ingest(&params, Arrival::now()).await.unwrap().0;
    assert_eq!((first, retry), (Outcome::Ingested, Outcome::Duplicate));
}

on_every_stack!(a_user_stored_without_a_name_is_named_by_a_later_message);
async fn a_user_stored_without_a_name_is_named_by_a_later_message(stack: &Stack, app: &TestApp) {
    let phone = unique_phone();
    let wa = format!("whatsapp:{phone}");
    // The first message stores the user with no name, and the service now knows the user.
    assert_eq!(app.ingestor.ingest(&sms(&wa, "first"), Arrival::now()).await.unwrap().0, Outcome::Ingested);
    let mut named = sms(&wa, "second").pairs().to_vec();
    named.push(("ProfileName".into(), "Grace".into()));
    assert_eq!(app.ingestor.ingest(&Params::from_pairs(named), Arrival::now()).await.unwrap().0, Outcome::Ingested);
    assert_eq!(
        read_column(stack, &format!("select first_name from users where phone_number = '{phone}'")),
        vec![Some("Grace".into())]
    );
}

on_every_stack!(a_user_deleted_behind_the_services_back_is_stored_again);
async fn a_user_deleted_behind_the_services_back_is_stored_again(stack: &Stack, app: &TestApp) {
    let phone = unique_phone();
    assert_eq!(app.ingestor.ingest(&sms(&phone, "first"), Arrival::now()).await.unwrap().0, Outcome::Ingested);
    stack
        .execute(&format!(
            "delete from jobs where user_id = '{phone}'; delete from users where phone_number = '{phone}';"
        ))
        .unwrap();

    let params = sms(&phone, "after the delete");
    let sid = sid_of(&params);
    assert_eq!(app.ingestor.ingest(&params, Arrival::now()).await.unwrap().0, Outcome::Ingested);
    assert_eq!(count(stack, &format!("select count(*) from users where phone_number = '{phone}'")), 1);
    assert_eq!(jobs_with_sid(stack, &sid), 1);
    assert_eq!(count(stack, &format!("select count(*) from dlq_jobs where message_sid = '{sid}'")), 0);
}

on_every_stack!(a_known_users_messages_leave_the_users_row_unlocked);
/// A user the service has stored is not locked again by each of their messages, so messages from
/// one busy user do not queue behind each other's transactions.
async fn a_known_users_messages_leave_the_users_row_unlocked(stack: &Stack, app: &TestApp) {
    let phone = unique_phone();
    assert_eq!(app.ingestor.ingest(&sms(&phone, "first"), Arrival::now()).await.unwrap().0, Outcome::Ingested);

    // Another transaction holds the lock a users upsert would need (but a job's foreign key
    // check does not) for longer than the request's deadline.
    let (db, connection) = tokio_postgres::connect(&stack.db_url(), tokio_postgres::NoTls).await.unwrap();
    let connection = tokio::spawn(connection);
    db.batch_execute(&format!("begin; select from users where phone_number = '{phone}' for no key update;"))
        .await
        .unwrap();

    let params = sms(&phone, "while the row is locked");
    let outcome = app.ingestor.ingest(&params, Arrival::now()).await.unwrap().0;
    db.batch_execute("rollback").await.unwrap();
    drop(db);
    let _ = connection.await;
    assert_eq!(outcome, Outcome::Ingested, "the message waited on the user's row");
    let sid = params.get("MessageSid").unwrap();
    assert_eq!(jobs_with_sid(stack, sid), 1);
}

/// A dm job from `phone` with a fresh MessageSid, encoded as the batcher sends it.
fn dm_job(phone: &str) -> EncodedJob {
    let payload = serde_json::json!({"Body": "batch"});
    NewJob {
        message_sid: &unique("SM"),
        user_phone: Some(phone),
        bsuid: None,
        parent_bsuid: None,
        chat: None,
        first_name: None,
        source_type: "dm",
        source_channel_id: phone,
        channel_prefix: Some(""),
        content_type: "text",
        payload: &payload,
        received_at_us: ReceivedAt::now().as_micros(),
    }
    .encode()
}

/// What `ingest_inbound` answers: the positions in the batch whose MessageSid already had a job, and
/// nothing about a MessageSid that appears twice in the batch itself (the caller sees that).
#[tokio::test]
async fn a_batch_reports_the_messages_that_already_had_a_job() {
    let stack = shared_stack(Grants::None);
    for kind in [KeyKind::LegacyJwt, KeyKind::Secret] {
        let supabase = supabase_client(stack, kind);
        let phone = unique_phone();
        let (a, b, c) = (dm_job(&phone), dm_job(&phone), dm_job(&phone));
        let timeout = Duration::from_secs(5);
        assert_eq!(supabase.ingest_inbound(&[&a], timeout).await.unwrap(), Vec::<usize>::new());
        assert_eq!(supabase.ingest_inbound(&[&b, &a, &c, &b], timeout).await.unwrap(), vec![1]);
        assert_eq!(supabase.ingest_inbound(&[&c, &b], timeout).await.unwrap(), vec![0, 1]);
        assert_eq!(supabase.ingest_inbound(&[], timeout).await.unwrap(), Vec::<usize>::new());
        assert_eq!(count(stack, &format!("select count(*) from jobs where user_id = '{phone}'")), 3);
    }
}

/// `ingest_jobs` trusts its caller that every user is stored; when one is not, the foreign key
/// refuses the whole batch, so nothing of it is written and the caller can send it again.
#[tokio::test]
async fn ingest_jobs_refuses_a_batch_with_a_user_not_stored_and_writes_nothing() {
    let stack = shared_stack(Grants::None);
    let supabase = supabase_client(stack, KeyKind::Secret);
    let (stored, missing) = (unique_phone(), unique_phone());
    stack.execute(&format!("insert into users (phone_number) values ('{stored}')")).unwrap();
    let (a, b) = (dm_job(&stored), dm_job(&missing));
    let err = supabase.ingest_jobs(&[&a, &b], Duration::from_secs(5)).await.unwrap_err();
    assert!(err.is_foreign_key_violation(), "{err}");
    assert_eq!(count(stack, &format!("select count(*) from jobs where user_id in ('{stored}', '{missing}')")), 0);

    assert_eq!(supabase.ingest_jobs(&[&a], Duration::from_secs(5)).await.unwrap(), Vec::<usize>::new());
    assert_eq!(count(stack, &format!("select count(*) from jobs where user_id = '{stored}'")), 1);
}

on_every_stack!(a_forged_signature_writes_nothing);
async fn a_forged_signature_writes_nothing(stack: &Stack, app: &TestApp) {
    let phone = unique_phone();
    let params = sms(&phone, "forged");
    let wrong =
        twilio_ingest::twilio::signature::sign("not-the-token", &format!("{PUBLIC_URL}/webhooks/twilio"), &params);
    assert_eq!(app.post_with_signature(&params, Some(&wrong)).await.status(), 403);
    assert_eq!(app.post_with_signature(&params, None).await.status(), 403);
    assert_eq!(count(stack, &format!("select count(*) from users where phone_number = '{phone}'")), 0);
    assert_eq!(count(stack, &format!("select count(*) from jobs where user_phone = '{phone}'")), 0);
    assert_eq!(count(stack, &format!("select count(*) from dlq_jobs where payload->>'From' = '{phone}'")), 0);
}

on_every_stack!(a_tampered_body_writes_nothing);
async fn a_tampered_body_writes_nothing(stack: &Stack, app: &TestApp) {
    let phone = unique_phone();
    let params = sms(&phone, "pay 10");
    let sig = sign(&params);
    let tampered: Vec<(String, String)> = params
        .pairs()
        .iter()
        .map(|(k, v)| (k.clone(), if k == "Body" { "pay 1000".into() } else { v.clone() }))
        .collect();
    assert_eq!(app.post_with_signature(&Params::from_pairs(tampered), Some(&sig)).await.status(), 403);
    assert_eq!(count(stack, &format!("select count(*) from jobs where user_phone = '{phone}'")), 0);
    assert_eq!(count(stack, &format!("select count(*) from users where phone_number = '{phone}'")), 0);
}

on_every_stack!(an_mms_with_two_media_keeps_both_in_the_payload);
async fn an_mms_with_two_media_keeps_both_in_the_payload(stack: &Stack, app: &TestApp) {
    let mut pairs: Vec<(String, String)> =
        sms(&unique_phone(), "").pairs().iter().filter(|(k, _)| k != "NumMedia").cloned().collect();
    pairs.extend([
        ("NumMedia".into(), "2".into()),
        ("MediaUrl0".into(), "https://api.twilio.com/2010-04-01/Accounts/AC0/Messages/MM0/Media/ME0".into()),
        ("MediaContentType0".into(), "image/jpeg".into()),
        ("MediaUrl1".into(), "https://api.twilio.com/2010-04-01/Accounts/AC0/Messages/MM0/Media/ME1".into()),
        ("MediaContentType1".into(), "image/png".into()),
    ]);
    let params = Params::from_pairs(pairs);
    let sid = sid_of(&params);
    assert_twiml(app.post_signed(&params).await).await;
    assert_eq!(
        read_column(stack, &format!(
            "select concat_ws('|', content_type, payload->>'NumMedia', payload->>'MediaContentType0', payload->>'MediaContentType1', payload->>'MediaUrl1')
             from jobs where message_sid = '{sid}'"
        )),
        vec![Some("image|2|image/jpeg|image/png|https://api.twilio.com/2010-04-01/Accounts/AC0/Messages/MM0/Media/ME1".into())]
    );
}

on_every_stack!(a_signed_message_without_a_sender_is_dead_lettered);
async fn a_signed_message_without_a_sender_is_dead_lettered(stack: &Stack, app: &TestApp) {
    let params: Vec<(String, String)> =
        sms("+15005550006", "who am I").pairs().iter().filter(|(k, _)| k != "From").cloned().collect();
    let params = Params::from_pairs(params);
    let sid = sid_of(&params);
    assert_twiml(app.post_signed(&params).await).await;
    assert_eq!(jobs_with_sid(stack, &sid), 0);
    assert_eq!(
        read_column(
            stack,
            &format!(
                "select concat_ws('|', error_kind, error, payload->>'Body') from dlq_jobs where message_sid = '{sid}'"
            )
        ),
        vec![Some("unusable|no sender: From is missing|who am I".into())]
    );
}

on_every_stack!(an_unusable_message_sent_twice_is_dead_lettered_once);
async fn an_unusable_message_sent_twice_is_dead_lettered_once(stack: &Stack, app: &TestApp) {
    // No MessageSid to deduplicate by: the payload itself is the key.
    let marker = unique("no-sid-");
    let params = Params::from_pairs([("Body", marker.as_str()), ("AccountSid", "AC00000000000000000000000000000000")]);
    assert_twiml(app.post_signed(&params).await).await;
    assert_twiml(app.post_signed(&params).await).await;
    let letters: Vec<(String, String)> =
        read_rows(stack, &format!("select error_kind, error from dlq_jobs where payload->>'Body' = '{marker}'"));
    assert_eq!(letters, [("unusable".to_owned(), "no MessageSid: the webhook has no message id".to_owned())]);
}

on_every_stack!(a_repeated_key_is_kept_as_an_array_in_the_payload);
async fn a_repeated_key_is_kept_as_an_array_in_the_payload(stack: &Stack, app: &TestApp) {
    let mut pairs = group_message(&unique("CH"), &unique_phone(), "x").pairs().to_vec();
    pairs.push(("MessagingBinding.Address".into(), "+15005550006".into()));
    pairs.push(("MessagingBinding.Address".into(), "+15005550007".into()));
    let params = Params::from_pairs(pairs);
    let sid = sid_of(&params);
    assert_twiml(app.post_signed(&params).await).await;
    assert_eq!(
        read_column(
            stack,
            &format!("select payload->>'MessagingBinding.Address' from jobs where message_sid = '{sid}'")
        ),
        vec![Some(r#"["+15005550006", "+15005550007"]"#.into())]
    );
}

/// The anon key (legacy or publishable) can neither read nor write any of the tables.
#[test]
fn the_anon_key_can_neither_read_nor_write_any_table() {
    for grants in [Grants::Default, Grants::None] {
        let stack = shared_stack(grants);
        let anon = jwt("anon");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let client = reqwest::Client::new();
            for (apikey, bearer) in [(anon.as_str(), Some(anon.as_str())), (PUBLISHABLE_KEY, None)] {
                for table in ["users", "user_identities", "jobs", "dlq_jobs"] {
                    let url = format!("{}/rest/v1/{table}", stack.url());
                    let with_key = |r: reqwest::RequestBuilder| {
                        let r = r.header("apikey", apikey);
                        match bearer {
                            Some(b) => r.bearer_auth(b),
                            None => r,
                        }
                    };
                    let read = with_key(client.get(format!("{url}?select=*&limit=1"))).send().await.unwrap();
                    assert!(matches!(read.status().as_u16(), 401 | 403), "{grants:?} read {table}: {}", read.status());
                    let body = match table {
                        "users" => r#"{"phone_number":"+15005550099"}"#,
                        "jobs" => r#"{"user_id":"+15005550099","source_channel_id":"x","source_type":"dm","user_phone":"+15005550099","payload":{}}"#,
                        "user_identities" => r#"{"kind":"chat","value":"x","user_id":"+15005550099"}"#,
                        _ => r#"{"payload":{},"error":"x","error_kind":"unusable"}"#,
                    };
                    let write = with_key(client.post(&url)).header("Content-Type", "application/json").body(body).send().await.unwrap();
                    assert!(matches!(write.status().as_u16(), 401 | 403), "{grants:?} write {table}: {}", write.status());
                }
                for (function, args) in [
                    ("ingest_inbound", "[]"),
                    ("ingest_batch", "[]"),
                    ("ingest_jobs", "[]"),
                    ("ingest_messages", r#"{"messages":[]}"#),
                ] {
                    let rpc = with_rpc_key(&client, &stack.url(), function, args, apikey, bearer).await;
                    // Not 404: a function that was dropped would pass.
                    assert!(matches!(rpc, 401 | 403), "{grants:?} rpc {function}: {rpc}");
                }
            }
        });
        assert_eq!(count(stack, "select count(*) from users where phone_number = '+15005550099'"), 0);
    }
}

async fn with_rpc_key(
    client: &reqwest::Client,
    url: &str,
    function: &str,
    args: &'static str,
    apikey: &str,
    bearer: Option<&str>,
) -> u16 {
    let mut r = client
        .post(format!("{url}/rest/v1/rpc/{function}"))
        .header("apikey", apikey)
        .header("Content-Type", "application/json")
        .body(args);
    if let Some(b) = bearer {
        r = r.bearer_auth(b);
    }
    r.send().await.unwrap().status().as_u16()
}

/// The gateway is Supabase-like: no key, a wrong key, or a secret key with a stray bearer is refused.
#[test]
fn the_gateway_refuses_requests_without_a_valid_key() {
    let stack = shared_stack(Grants::None);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let url = format!("{}/rest/v1/jobs?select=id&limit=0", stack.url());
        let none = client.get(&url).send().await.unwrap();
        assert_eq!(none.status(), 401);
        assert_eq!(none.text().await.unwrap(), r#"{"message":"No API key found in request"}"#);
        let wrong = client.get(&url).header("apikey", "sb_secret_wrong").send().await.unwrap();
        assert_eq!(wrong.text().await.unwrap(), r#"{"message":"Invalid API key"}"#);
        let secret = KeyKind::Secret.service_key();
        let ok = client.get(&url).header("apikey", &secret).send().await.unwrap();
        assert_eq!(ok.status(), 200);
        let stray = client.get(&url).header("apikey", &secret).bearer_auth(jwt("anon")).send().await.unwrap();
        assert_eq!(stray.status(), 401);
    });
}

/// An insert PostgREST refuses for the message's content (here, a rule added to `jobs`) is
/// dead-lettered with the error, and Twilio still gets its 200. (A refusal of every message
/// alike, such as a grant revoked, is spooled instead: see `promise`.)
#[tokio::test]
async fn an_insert_refused_by_postgrest_is_dead_lettered_and_answered_200() {
    for grants in [Grants::Default, Grants::None] {
        let stack = Stack::start(grants).unwrap();
        stack
            .execute("alter table public.jobs add constraint no_refusals check (payload->>'Body' <> 'refused')")
            .unwrap();
        let app = spawn_app(&stack, KeyKind::Secret).await;
        let params = sms(&unique_phone(), "refused");
        let sid = sid_of(&params);
        assert_twiml(app.post_signed(&params).await).await;
        assert_eq!(count(&stack, "select count(*) from jobs"), 0);
        let letters: Vec<(String, String, String)> = read_rows(
            &stack,
            &format!("select error_kind, error, payload->>'Body' from dlq_jobs where message_sid = '{sid}'"),
        );
        assert_eq!(letters.len(), 1, "{grants:?}");
        let (kind, error, body) = &letters[0];
        assert_eq!((kind.as_str(), body.as_str()), ("rejected", "refused"));
        assert!(error.starts_with("PostgREST answered 400 (23514)"), "{error}");
        assert!(error.contains("no_refusals"), "{error}");
        app.stop().await;
    }
}

/// A message the database refuses does not take its batch down with it: concurrent messages share
/// round trips, the batch holding the bad one is split until it is alone, and only it is
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refused_message_does_not_punish_its_batch() {
    let stack = Stack::start(Grants::None).unwrap();
    stack
        .execute("alter table public.jobs add constraint jobs_no_poison check (payload->>'Body' <> 'poison')")
        .unwrap();
    let app = spawn_app(&stack, KeyKind::Secret).await;
    let messages: Vec<Params> =
        (0..40).map(|i| sms(&unique_phone(), if i == 17 { "poison" } else { "fine" })).collect();
    let answers = futures_util::future::join_all(messages.iter().map(|m| app.post_signed(m))).await;
    assert!(answers.iter().all(|a| a.status() == 200));
    let sids = sids_of(&messages);
    let poison = &sids[17];
    assert_eq!(count(&stack, &format!("select count(*) from jobs where message_sid in ({})", sql_list(&sids))), 39);
    let letters: Vec<(String, String, String)> =
        read_rows(&stack, "select message_sid, error_kind, error from dlq_jobs");
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (sid, kind, error) = &letters[0];
    assert_eq!((sid, kind.as_str()), (poison, "rejected"));
    let expected =
        "PostgREST answered 400 (23514): new row for relation \"jobs\" violates check constraint \"jobs_no_poison\"";
    assert!(error.starts_with(expected), "{letters:?}");
    app.stop().await;
}
