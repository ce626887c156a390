-- A few realistic rows for local runs (`supabase db reset` applies this after the migrations).
insert into public.users (phone_number, first_name) values
    ('+14155550100', 'Ada'),
    ('+447700900123', null);

insert into public.jobs (user_id, source_channel_id, source_type, user_phone, content_type, payload, message_sid) values
    ('+14155550100', 'whatsapp:+14155550100', 'dm', '+14155550100', 'text',
     '{"MessageSid":"SM00000000000000000000000000000001","From":"whatsapp:+14155550100","To":"whatsapp:+14155238886","Body":"Hi!","ProfileName":"Ada","WaId":"14155550100","NumMedia":"0"}',
     'SM00000000000000000000000000000001'),
    ('+447700900123', 'CH00000000000000000000000000000001', 'group', '+447700900123', 'image',
     '{"EventType":"onMessageAdded","ConversationSid":"CH00000000000000000000000000000001","MessageSid":"IM00000000000000000000000000000001","Author":"+447700900123","Body":"","Media":"[{\"Sid\":\"ME1\",\"ContentType\":\"image/jpeg\",\"Filename\":\"a.jpg\",\"Size\":1024}]"}',
     'IM00000000000000000000000000000001');

insert into public.dlq_jobs (message_sid, dedupe_key, payload, error, error_kind) values
    ('SM00000000000000000000000000000002', 'SM00000000000000000000000000000002', '{"MessageSid":"SM00000000000000000000000000000002","Body":"no sender"}',
     'no sender: From is missing', 'unusable');
