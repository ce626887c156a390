//! Every sender is a user: WhatsApp senders known by a phone, a business-scoped user id (BSUID)
//! or both, Conversations authors who are phones, BSUIDs or chat identities. One person is one
//! user however they write, and their direct messages stay one channel.

use devstack::{project_copy, repo_root, Grants, Stack};
use twilio_ingest::twilio::Params;

use crate::helpers::*;
use crate::on_every_stack;

/// A fresh BSUID, as WhatsApp makes them: a country, a dot, digits.
fn unique_bsuid() -> String {
    format!("US.{}", uuid::Uuid::new_v4().as_u128())
}

/// A WhatsApp message from `from` (`whatsapp:+1…` or `whatsapp:US.…`) with `extra` params.
fn whatsapp(from: &str, extra: &[(&str, &str)]) -> Params {
    let mut pairs = sms(from, "hola").pairs().to_vec();
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Params::from_pairs(pairs)
}

/// Posts each message signed, in order, and checks each was acknowledged.
async fn post_all(app: &TestApp, messages: &[Params]) {
    for message in messages {
        assert_eq!(app.post_signed(message).await.status(), 200);
    }
}

/// `(user_id, source_channel_id, reply_to)` of each job, in the order of `messages`.
fn jobs_of(stack: &Stack, messages: &[Params]) -> Vec<(String, String, String)> {
    messages
        .iter()
        .flat_map(|m| {
            read_rows::<(String, String, String)>(
                stack,
                &format!(
                    "select coalesce(user_id, ''), source_channel_id, reply_to from jobs where message_sid = '{}'",
                    sid_of(m)
                ),
            )
        })
        .collect()
}

fn user_of_identity(stack: &Stack, kind: &str, value: &str) -> Vec<Option<String>> {
    read_column(stack, &format!("select user_id from user_identities where kind = '{kind}' and value = '{value}'"))
}

on_every_stack!(a_whatsapp_sender_known_only_by_a_bsuid_is_a_user_and_a_job);
async fn a_whatsapp_sender_known_only_by_a_bsuid_is_a_user_and_a_job(stack: &Stack, app: &TestApp) {
    let bsuid = unique_bsuid();
    let from = format!("whatsapp:{bsuid}");
    let message = whatsapp(&from, &[("ExternalUserId", &from), ("ProfileName", "Ada"), ("ProfileUsername", "ada")]);
    post_all(app, std::slice::from_ref(&message)).await;

    let user = user_of_identity(stack, "whatsapp", &bsuid);
    let [Some(user)] = user.as_slice() else { panic!("one user for the BSUID, found {user:?}") };
    assert!(user.starts_with("usr_"), "{user}");
    let users: Vec<(String, String)> =
        read_rows(stack, &format!("select coalesce(phone_number, ''), first_name from users where id = '{user}'"));
    assert_eq!(users, [(String::new(), "Ada".to_owned())], "no phone, named by ProfileName");
    assert_eq!(
        jobs_of(stack, std::slice::from_ref(&message)),
        [(user.clone(), format!("whatsapp:{user}"), from.clone())]
    );
    let kept: Vec<(String, String)> = read_rows(
        stack,
        &format!(
            "select coalesce(user_phone, ''), payload->>'ProfileUsername' from jobs where message_sid = '{}'",
            sid_of(&message)
        ),
    );
    assert_eq!(kept, [(String::new(), "ada".to_owned())]);
    assert_eq!(count(stack, "select count(*) from dlq_jobs where payload->>'From' like 'whatsapp:US.%'"), 0);
}

on_every_stack!(a_phone_and_a_bsuid_sent_together_are_one_user_from_then_on);
/// Linked in one request, then either address alone finds the user, and the thread stays the
/// phone-keyed channel it was.
async fn a_phone_and_a_bsuid_sent_together_are_one_user_from_then_on(stack: &Stack, app: &TestApp) {
    let (phone, bsuid) = (unique_phone(), unique_bsuid());
    let (by_phone, by_bsuid) = (format!("whatsapp:{phone}"), format!("whatsapp:{bsuid}"));
    let messages = [
        whatsapp(&by_phone, &[("ExternalUserId", &by_bsuid), ("WaId", &phone[1..])]),
        whatsapp(&by_bsuid, &[("ExternalUserId", &by_bsuid)]),
        whatsapp(&by_phone, &[]),
    ];
    post_all(app, &messages).await;

    let channel = format!("whatsapp:{phone}");
    assert_eq!(
        jobs_of(stack, &messages),
        [
            (phone.clone(), channel.clone(), by_phone.clone()),
            (phone.clone(), channel.clone(), by_bsuid.clone()),
            (phone.clone(), channel.clone(), by_phone.clone()),
        ],
        "one user, keyed by the phone as before; one channel; each reply to the address it came from"
    );
    assert_eq!(user_of_identity(stack, "whatsapp", &bsuid), [Some(phone.clone())]);
    assert_eq!(count(stack, &format!("select count(*) from users where phone_number = '{phone}'")), 1);
}

on_every_stack!(a_bsuid_known_first_is_given_its_phone_when_it_comes);
/// The other order: a BSUID first, its phone learnt later. The phone is filled in, the user keeps
/// its key, and the thread its channel.
async fn a_bsuid_known_first_is_given_its_phone_when_it_comes(stack: &Stack, app: &TestApp) {
    let (phone, bsuid) = (unique_phone(), unique_bsuid());
    let (by_phone, by_bsuid) = (format!("whatsapp:{phone}"), format!("whatsapp:{bsuid}"));
    let messages = [
        whatsapp(&by_bsuid, &[("ExternalUserId", &by_bsuid)]),
        whatsapp(&by_phone, &[("ExternalUserId", &by_bsuid)]),
        whatsapp(&by_phone, &[]),
        whatsapp(&by_bsuid, &[]),
    ];
    post_all(app, &messages).await;

    let user = user_of_identity(stack, "whatsapp", &bsuid);
    let [Some(user)] = user.as_slice() else { panic!("one user for the BSUID, found {user:?}") };
    assert!(user.starts_with("usr_"));
    assert_eq!(
        read_column(stack, &format!("select phone_number from users where id = '{user}'")),
        [Some(phone.clone())]
    );
    let channels: Vec<String> = jobs_of(stack, &messages).into_iter().map(|(u, c, _)| format!("{u} {c}")).collect();
    assert_eq!(channels, vec![format!("{user} whatsapp:{user}"); 4]);
    assert_eq!(
        count(stack, &format!("select count(*) from users where phone_number = '{phone}' or id = '{phone}'")),
        1
    );
}

on_every_stack!(a_parent_bsuid_links_one_persons_bsuids_across_a_portfolio);
/// A parent id names one person across a business portfolio: a second business's BSUID with the
/// same parent is the same user. A different parent is a different person.
async fn a_parent_bsuid_links_one_persons_bsuids_across_a_portfolio(stack: &Stack, app: &TestApp) {
    let parent = format!("US.ENT.{}", uuid::Uuid::new_v4().as_u128());
    let (first, second, stranger) = (unique_bsuid(), unique_bsuid(), unique_bsuid());
    let from = |b: &str| format!("whatsapp:{b}");
    let messages = [
        whatsapp(&from(&first), &[("ExternalUserId", &from(&first)), ("ParentExternalUserId", &from(&parent))]),
        whatsapp(&from(&second), &[("ExternalUserId", &from(&second)), ("ParentExternalUserId", &from(&parent))]),
        whatsapp(&from(&stranger), &[("ParentExternalUserId", &format!("whatsapp:US.ENT.{}", unique_bsuid()))]),
    ];
    post_all(app, &messages).await;

    let users: Vec<String> = jobs_of(stack, &messages).into_iter().map(|(user, ..)| user).collect();
    assert_eq!(users[0], users[1]);
    assert_ne!(users[0], users[2]);
    assert_eq!(user_of_identity(stack, "whatsapp_parent", &parent), [Some(users[0].clone())]);
    assert_eq!(count(stack, &format!("select count(*) from user_identities where user_id = '{}'", users[0])), 3);
}

on_every_stack!(two_bsuid_senders_with_one_profile_name_are_two_users);
async fn two_bsuid_senders_with_one_profile_name_are_two_users(stack: &Stack, app: &TestApp) {
    let messages: Vec<Params> =
        (0..2).map(|_| whatsapp(&format!("whatsapp:{}", unique_bsuid()), &[("ProfileName", "Maria")])).collect();
    post_all(app, &messages).await;
    let jobs = jobs_of(stack, &messages);
    assert_ne!(jobs[0].0, jobs[1].0, "a name is not an identity");
    assert_ne!(jobs[0].1, jobs[1].1, "nor one channel");
}

on_every_stack!(conversations_authors_are_users_whatever_address_they_write_from);
/// Conversations authors: a WhatsApp BSUID address (the same user as that BSUID's direct
/// messages), chat identities (an e-mail too, and one far longer than an index entry, stored
/// exactly), each their own user, and `system`: a job with no user, for a bot to skip.
async fn conversations_authors_are_users_whatever_address_they_write_from(stack: &Stack, app: &TestApp) {
    let conversation = unique("CH");
    let bsuid = unique_bsuid();
    let (chat, email) = (unique("ada.lovelace."), format!("{}@example.com", unique("ada")));
    let long = format!("{}{}", unique("long."), "é".repeat(5_000));
    let dm = whatsapp(&format!("whatsapp:{bsuid}"), &[]);
    let authors = [format!("whatsapp:{bsuid}"), chat.clone(), email.clone(), chat.clone(), long.clone()];
    let mut messages: Vec<Params> = authors.iter().map(|a| group_message(&conversation, a, "hi all")).collect();
    messages.push(group_message(&conversation, "system", "Ada joined"));
    post_all(app, std::slice::from_ref(&dm)).await;
    post_all(app, &messages).await;

    let jobs = jobs_of(stack, &messages);
    let users: Vec<&str> = jobs.iter().map(|(user, ..)| user.as_str()).collect();
    assert_eq!(users[0], jobs_of(stack, &[dm])[0].0, "a BSUID is one user in a DM and a group");
    assert_eq!(users[1], users[3], "one chat identity, one user");
    let distinct: std::collections::HashSet<&str> = users[..5].iter().copied().collect();
    assert_eq!(distinct.len(), 4, "{users:?}");
    assert_eq!(users[5], "", "a system message has no user");
    assert!(jobs.iter().all(|(_, channel, reply_to)| channel == &conversation && reply_to == &conversation));
    assert_eq!(
        read_column(stack, &format!("select value from user_identities where user_id = '{}'", users[4])),
        [Some(long)],
        "kept exactly"
    );
    assert_eq!(user_of_identity(stack, "chat", &email), [Some(users[2].to_owned())]);
    assert_eq!(
        count(stack, &format!("select count(*) from dlq_jobs where payload->>'ConversationSid' = '{conversation}'")),
        0
    );
}

on_every_stack!(a_malformed_external_user_id_leaves_the_message_to_its_phone);
/// A malformed ExternalUserId costs the message nothing: the job is the phone's, and its payload
/// keeps the value as sent.
async fn a_malformed_external_user_id_leaves_the_message_to_its_phone(stack: &Stack, app: &TestApp) {
    let phone = unique_phone();
    let junk = format!("whatsapp:{}", "ü<>'\"".repeat(2_000));
    let message = whatsapp(&format!("whatsapp:{phone}"), &[("ExternalUserId", &junk), ("ParentExternalUserId", "x")]);
    post_all(app, std::slice::from_ref(&message)).await;
    let stored: Vec<(String, String)> = read_rows(
        stack,
        &format!("select user_id, payload->>'ExternalUserId' from jobs where message_sid = '{}'", sid_of(&message)),
    );
    assert_eq!(stored, [(phone.clone(), junk)]);
    assert_eq!(count(stack, &format!("select count(*) from user_identities where user_id = '{phone}'")), 0);
}

on_every_stack!(deleting_a_user_deletes_every_identity_linked_to_them);
/// Erasure: deleting a user deletes their identities and jobs, and their next message makes a
/// new user.
async fn deleting_a_user_deletes_every_identity_linked_to_them(stack: &Stack, app: &TestApp) {
    let (phone, bsuid) = (unique_phone(), unique_bsuid());
    let message = whatsapp(&format!("whatsapp:{phone}"), &[("ExternalUserId", &format!("whatsapp:{bsuid}"))]);
    post_all(app, std::slice::from_ref(&message)).await;
    stack.execute(&format!("delete from users where id = '{phone}'")).unwrap();
    assert_eq!(count(stack, &format!("select count(*) from user_identities where value = '{bsuid}'")), 0);
    assert_eq!(jobs_with_sid(stack, &sid_of(&message)), 0);
}

/// Two machines take the first two messages of one person at the same moment, each from a
/// different address of theirs: one user, both addresses linked to it.
#[tokio::test]
async fn concurrent_first_messages_of_one_person_on_two_machines_make_one_user() {
    let stack = shared_stack(Grants::None);
    let machines = [
        Service::start(&stack.url(), &temp_dir("spool"), "4500"),
        Service::start(&stack.url(), &temp_dir("spool"), "4500"),
    ];
    let client = reqwest::Client::new();
    let post = |machine: &Service, message: &Params| {
        client
            .post(machine.url())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("X-Twilio-Signature", sign(message))
            .body(form(message))
            .send()
    };
    let mut people = Vec::new();
    for _ in 0..20 {
        let (phone, bsuid) = (unique_phone(), unique_bsuid());
        let (by_phone, by_bsuid) = (format!("whatsapp:{phone}"), format!("whatsapp:{bsuid}"));
        let both = whatsapp(&by_phone, &[("ExternalUserId", &by_bsuid)]);
        let only_bsuid = whatsapp(&by_bsuid, &[("ExternalUserId", &by_bsuid)]);
        let (a, b) = tokio::join!(post(&machines[0], &only_bsuid), post(&machines[1], &both));
        assert_eq!(a.unwrap().status(), 200);
        assert_eq!(b.unwrap().status(), 200);
        people.push((phone, bsuid, [only_bsuid, both]));
    }
    for (phone, bsuid, messages) in &people {
        let jobs = jobs_of(stack, messages);
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].0, jobs[1].0, "one person, one user");
        assert_eq!(jobs[0].1, jobs[1].1, "one channel");
        assert_eq!(user_of_identity(stack, "whatsapp", bsuid), [Some(jobs[0].0.clone())]);
        let users =
            count(stack, &format!("select count(*) from users where phone_number = '{phone}' or id = '{phone}'"));
        assert_eq!(users, 1);
    }
}

/// A database that already holds phone-keyed users and jobs, with a worker mid-queue, takes this
/// migration: nothing is lost, the worker finishes its job and claims the next in order, the
/// release before this one keeps ingesting, and a phone's BSUID joins its existing user and
/// channel.
#[test]
fn a_database_of_phone_keyed_users_migrates_with_workers_mid_queue() {
    let before = project_copy(Some("20261124000200")).unwrap();
    let stack = Stack::start_from(Grants::None, &before).unwrap();
    let phone = unique_phone();
    let channel = format!("whatsapp:{phone}");
    // What the release before this one stored: three messages of one thread.
    let job = |sid: &str, at: i64| {
        format!(
            r#"{{"message_sid":"{sid}","user_phone":"{phone}","first_name":"Ada","source_type":"dm",
                "source_channel_id":"{channel}","content_type":"text","received_at_us":{at},
                "payload":{{"From":"{channel}","MessageSid":"{sid}"}}}}"#
        )
    };
    stack
        .execute(&format!(
            "select ingest_batch('[{}, {}, {}]'::jsonb)",
            job("SMold1", 1_000),
            job("SMold2", 2_000),
            job("SMold3", 3_000)
        ))
        .unwrap();
    let claimed = read_column(&stack, "select message_sid from claim_jobs('old-worker', 1)");
    assert_eq!(claimed, [Some("SMold1".into())]);

    stack.push_migrations(&repo_root(), false).unwrap();

    let users: Vec<(String, String, String)> = read_rows(&stack, "select id, phone_number, first_name from users");
    assert_eq!(users, [(phone.clone(), phone.clone(), "Ada".into())]);
    let done = read_column(
        &stack,
        "select count(*) from complete_jobs('old-worker', (select jsonb_agg(jsonb_build_object('id', id)) from jobs where message_sid = 'SMold1'))",
    );
    assert_eq!(done, [Some("1".into())]);
    // The release before this one, still running during the deploy.
    stack.execute(&format!("select ingest_batch('[{}]'::jsonb)", job("SMold4", 4_000))).unwrap();
    // This release, with the phone's BSUID.
    let bsuid = unique_bsuid();
    stack
        .execute(&format!(
            r#"select ingest_inbound('[{{"message_sid":"SMnew5","user_phone":"{phone}","bsuid":"{bsuid}",
                 "source_type":"dm","source_channel_id":"{channel}","channel_prefix":"whatsapp:","content_type":"text",
                 "received_at_us":5000,"payload":{{"From":"{channel}"}}}}]'::jsonb)"#
        ))
        .unwrap();
    let jobs: Vec<(String, String, String)> =
        read_rows(&stack, "select message_sid, user_id, source_channel_id from jobs order by received_at");
    let expected: Vec<(String, String, String)> = ["SMold1", "SMold2", "SMold3", "SMold4", "SMnew5"]
        .iter()
        .map(|sid| (sid.to_string(), phone.clone(), channel.clone()))
        .collect();
    assert_eq!(jobs, expected);
    let next: Vec<String> = (0..4)
        .map(|i| {
            let sid = read_column(&stack, &format!("select message_sid from claim_jobs('worker-{i}', 5)"));
            stack
                .execute(&format!(
                    "select complete_jobs('worker-{i}', (select jsonb_agg(jsonb_build_object('id', id)) from jobs where status = 'processing'))"
                ))
                .unwrap();
            sid.into_iter().flatten().collect::<Vec<_>>().join(",")
        })
        .collect();
    assert_eq!(next, ["SMold2", "SMold3", "SMold4", "SMnew5"], "one at a time, in order");
    assert_eq!(
        read_column(&stack, &format!("select user_id from user_identities where value = '{bsuid}'")),
        [Some(phone)]
    );
    let _ = std::fs::remove_dir_all(before);
}
