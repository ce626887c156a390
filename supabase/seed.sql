-- A few realistic rows for local runs (`supabase db reset` applies this after the migrations).
insert into public.users (phone_number, first_name) values
    ('+14155550100', 'Ada'),
    ('+447700900123', null);

-- A WhatsApp user who withheld their phone: known by their business-scoped user id alone.
insert into public.users (id, first_name) values ('usr_0000000000000000000000000000000a', 'Grace');
insert into public.user_identities (kind, value, user_id) values
    ('whatsapp', 'US.13491208655302741918', 'usr_0000000000000000000000000000000a');

insert into public.jobs (user_id, source_channel_id, source_type, user_phone, content_type, payload, message_sid) values
    ('+14155550100', 'whatsapp:+14155550100', 'dm', '+14155550100', 'text',
     '{"MessageSid":"SM00000000000000000000000000000001","From":"whatsapp:+14155550100","To":"whatsapp:+14155238886","Body":"Hi!","ProfileName":"Ada","WaId":"14155550100","NumMedia":"0"}',
     'SM00000000000000000000000000000001'),
    ('+447700900123', 'CH00000000000000000000000000000001', 'group', '+447700900123', 'image',
     '{"EventType":"onMessageAdded","ConversationSid":"CH00000000000000000000000000000001","MessageSid":"IM00000000000000000000000000000001","Author":"+447700900123","Body":"","Media":"[{\"Sid\":\"ME1\",\"ContentType\":\"image/jpeg\",\"Filename\":\"a.jpg\",\"Size\":1024}]"}',
     'IM00000000000000000000000000000001'),
    ('usr_0000000000000000000000000000000a', 'whatsapp:usr_0000000000000000000000000000000a', 'dm', null, 'text',
     '{"MessageSid":"SM00000000000000000000000000000003","From":"whatsapp:US.13491208655302741918","ExternalUserId":"whatsapp:US.13491208655302741918","To":"whatsapp:+14155238886","Body":"Hello","ProfileName":"Grace","NumMedia":"0"}',
     'SM00000000000000000000000000000003');

insert into public.dlq_jobs (message_sid, dedupe_key, payload, error, error_kind) values
    ('SM00000000000000000000000000000002', 'SM00000000000000000000000000000002', '{"MessageSid":"SM00000000000000000000000000000002","Body":"no sender"}',
     'no sender: From is missing', 'unusable');
