-- Every sender is a user: WhatsApp senders known only by their business-scoped user id (BSUID),
-- and Conversations authors who are chat identities, not phones.
--
-- users gets a key of its own, `id`: the phone number for every user created with one (so every
-- existing row, and every SMS sender, keeps the key it had), an opaque `usr_…` otherwise.
-- `phone_number` stays, unique and E.164, and is filled in when a user first known by a BSUID
-- brings their phone. `user_identities` holds the other addresses that resolve to a user.
--
-- Deploy order, as before: this migration, then the release. The release before it keeps
-- working: ingest_batch and ingest_jobs still take jobs keyed by phone, and find the user by
-- phone_number. A release that runs ahead of it calls ingest_inbound, which is missing: its
-- messages are spooled until this is pushed.

-- A user's key: the phone when the user is created with one, so SMS senders stay as they were.
alter table public.users add column id text;
update public.users set id = phone_number;
alter table public.users alter column id set not null;

alter table public.jobs drop constraint jobs_user_id_fkey;
alter table public.users drop constraint users_pkey;
alter table public.users add constraint users_pkey primary key (id);
alter table public.users alter column phone_number drop not null;
alter table public.users add constraint users_phone_number_key unique (phone_number);

-- Rows inserted the old way (phone_number alone: the seed, a worker's fixtures, the release before
-- this one) get the phone as their key; a row with neither gets an opaque one.
create function public.users_default_id()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    if new.id is null then
        new.id := coalesce(new.phone_number, 'usr_' || replace(gen_random_uuid()::text, '-', ''));
    end if;
    return new;
end;
$$;

revoke execute on function public.users_default_id() from public, anon, authenticated;

create trigger users_default_id
    before insert on public.users
    for each row execute function public.users_default_id();

-- Deleting a user (an erasure request) still deletes their jobs, and now their identities too.
alter table public.jobs add constraint jobs_user_id_fkey
    foreign key (user_id) references public.users (id) on delete cascade not valid;
alter table public.jobs validate constraint jobs_user_id_fkey;

-- A job from a Conversations `system` author has no user; one without a phone has no user_phone.
alter table public.jobs alter column user_id drop not null;
alter table public.jobs alter column user_phone drop not null;

-- Where a bot answers: the message's own From for a direct message (`whatsapp:US.…` as it is,
-- never reparsed as a phone), the conversation for a group. Derived from the payload, so every
-- job has it, those stored before this migration too.
alter table public.jobs add column reply_to text generated always as (
    case when source_type = 'group' then payload ->> 'ConversationSid' else payload ->> 'From' end
) stored;

-- Internals the REST API does not expose: PostgREST serves `public` only.
create schema if not exists ingest_private;
revoke all on schema ingest_private from public, anon, authenticated;
grant usage on schema ingest_private to service_role;

-- An identity's key: the SHA-256 of its UTF-8 bytes. convert_to is only STABLE (it looks the
-- encoding up by name); with the name fixed the result never changes, which is what a generated
-- column needs.
create function ingest_private.identity_hash(value text)
returns bytea
language sql
immutable
strict
parallel safe
set search_path = ''
return pg_catalog.sha256(pg_catalog.convert_to(value, 'UTF8'));

revoke execute on function ingest_private.identity_hash(text) from public, anon, authenticated;
grant execute on function ingest_private.identity_hash(text) to service_role;

-- The addresses, besides the phone, that resolve to a user. kind:
--   whatsapp         a BSUID (`US.1349…`), from From or ExternalUserId
--   whatsapp_parent  a parent BSUID (`US.ENT.…`), from ParentExternalUserId: one person across a
--                    business portfolio
--   chat             a Conversations chat identity (`ada.lovelace`, an e-mail address)
-- Unique by a hash of the value, so that a value of any length is stored exactly (a btree entry
-- holds at most about 2,700 bytes).
create table public.user_identities (
    kind text not null constraint user_identities_kind check (kind in ('whatsapp', 'whatsapp_parent', 'chat')),
    value text not null,
    value_sha256 bytea not null generated always as (ingest_private.identity_hash(value)) stored,
    user_id text not null references public.users (id) on delete cascade,
    created_at timestamptz not null default now(),
    constraint user_identities_pkey primary key (kind, value_sha256)
);

create index user_identities_user_id_idx on public.user_identities (user_id);

alter table public.user_identities enable row level security;
revoke all on table public.user_identities from anon, authenticated;
grant select, insert, update, delete on table public.user_identities to service_role;


-- A phone-keyed job whose user is not stored: the caller (which thought it was) upserts the user
-- and sends the batch again. Raised from inside the insert, so the common path costs nothing.
create function ingest_private.missing_user()
returns text
language plpgsql
set search_path = ''
as $$
begin
    raise exception 'a job''s user is not stored' using errcode = '23503';
end;
$$;

revoke execute on function ingest_private.missing_user() from public, anon, authenticated;
grant execute on function ingest_private.missing_user() to service_role;

-- The jobs insert shared by every ingest function: each message's user, its channel, arrival
-- times, NOTIFY jobs, and the duplicate report in X-Ingest-Duplicates (the zero-based positions
-- whose MessageSid already had a job).
--
-- A message's user is user_ids[its position] when the caller resolved it (ingest_inbound, for
-- senders with more than a phone), else the user whose phone_number is its user_phone; none for
-- a message with neither (a Conversations `system` message). A WhatsApp direct message's channel
-- is its prefix and the user's key; any other message's channel is what the caller sent.
create function ingest_private.insert_jobs(messages jsonb, user_ids text[], user_phones text[])
returns void
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
    written bigint;
    duplicates text;
begin
    -- Sorted: two batches holding the same two MessageSids (a retry racing its original) would
    -- otherwise wait on each other's unique-index entries.
    insert into public.jobs (
        message_sid, user_id, user_phone, source_type, source_channel_id, content_type, payload, received_at
    )
    select m.message_sid, k.user_id, coalesce(user_phones[m.position], m.user_phone), m.source_type,
           case when m.source_type = 'dm' and coalesce(m.channel_prefix, '') <> ''
                then m.channel_prefix || k.user_id else m.source_channel_id end,
           m.content_type, m.payload,
           coalesce(timestamptz 'epoch' + m.received_at_us * interval '1 microsecond', clock_timestamp())
    from rows from (
        jsonb_to_recordset(messages) as (
            message_sid text, user_phone text, source_type text, source_channel_id text, channel_prefix text,
            content_type text, payload jsonb, received_at_us bigint
        )
    ) with ordinality as m (
        message_sid, user_phone, source_type, source_channel_id, channel_prefix, content_type, payload,
        received_at_us, position
    )
    cross join lateral (
        select coalesce(
            user_ids[m.position],
            case when m.user_phone is not null then coalesce(
                (select u.id from public.users as u where u.phone_number = m.user_phone),
                ingest_private.missing_user()
            ) end
        ) as user_id
    ) as k
    order by m.message_sid
    on conflict (message_sid) do nothing;
    get diagnostics written = row_count;

    if written > 0 then
        perform pg_notify('jobs', json_build_object('inserted', written)::text);
    end if;

    if written < jsonb_array_length(messages) then
        -- Dynamic SQL, so it is planned for the table as it is now.
        execute
            'select string_agg((m.position - 1)::text, '','' order by m.position)
             from jsonb_array_elements($1) with ordinality as m (message, position)
             join public.jobs as j on j.message_sid = m.message ->> ''message_sid''
             where j.xmin <> pg_current_xact_id()::xid'
            into duplicates
            using messages;
        perform set_config(
            'response.headers',
            json_build_array(json_build_object('X-Ingest-Duplicates', coalesce(duplicates, '')))::text,
            true
        );
    end if;
end;
$$;

revoke execute on function ingest_private.insert_jobs(jsonb, text[], text[]) from public, anon, authenticated;
grant execute on function ingest_private.insert_jobs(jsonb, text[], text[]) to service_role;

-- Jobs keyed by phone, for users the caller knows are stored: what the release before this one
-- sends, and what this release sends for a batch of phone senders it has stored already. The
-- user is found by phone_number (a user first known by a BSUID has another key). A phone with no
-- user is refused with 23503, as the foreign key refused it before, so the caller upserts and
-- retries.
create or replace function public.ingest_jobs(jsonb)
returns void
language plpgsql
volatile
security invoker
set search_path = ''
as $$
begin
    perform ingest_private.insert_jobs($1, null, null);
end;
$$;

-- ingest_batch (the release before this one) is unchanged: it upserts users by phone_number,
-- which stays unique, and then calls ingest_jobs above.

-- ingest_inbound: what this release calls, once per batch. Each message names its sender by every
-- address it carries (user_phone, bsuid, parent_bsuid, chat) and, for a direct message, the
-- channel's prefix (`whatsapp:`, or empty for SMS).
--   * A sender known by a phone alone (every SMS, most WhatsApp) is upserted by phone_number, as
--     ingest_batch did, all such senders in one statement: a new user is keyed by the phone.
--   * Every other sender is resolved on its own, in order: by its own id first (bsuid or chat
--     identity), then the phone, then the parent id. No user: one is created, keyed by the phone
--     if there is one, and every address linked. A user: what it lacks is added (the phone, if no
--     one else has it; the first name; each address no one else has). Two users are never
--     merged: an address that belongs to another user stays with it.
--   * A WhatsApp direct message's channel is the prefix and the user's key, so a person's thread
--     is one channel whether WhatsApp sends the phone, the BSUID or both; a phone-keyed user's
--     channel is `whatsapp:+1…` as before. An SMS's channel is its From, the phone, as before.
--     A group's channel is its ConversationSid.
--   * A message with no address at all (a Conversations `system` author) is a job with no user.
--
-- Concurrency: the batch's addresses are locked (transaction-scoped advisory locks, sorted, in one
-- statement, so two batches cannot deadlock) before anything is read, so two webhooks of one
-- person, on one machine or two, resolve one after the other and make one user.
create function public.ingest_inbound(jsonb)
returns void
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
    messages alias for $1;
    m record;
    uid text;
    by_phone text;
    by_bsuid text;
    by_parent text;
    by_chat text;
    user_ids text[] := '{}';
    user_phones text[] := '{}';
begin
    perform pg_advisory_xact_lock(a.key)
    from (
        select distinct hashtextextended(x.kind || ':' || x.value, 7261) as key
        from jsonb_to_recordset(messages) as s (user_phone text, bsuid text, parent_bsuid text, chat text),
             lateral (values ('phone', s.user_phone), ('whatsapp', s.bsuid), ('whatsapp_parent', s.parent_bsuid),
                             ('chat', s.chat)) as x (kind, value)
        where x.value is not null
        order by 1
    ) as a;

    -- Senders known by a phone alone, as ingest_batch upserts them. A name fills in a nameless
    -- user, never replaces one.
    insert into public.users as u (phone_number, first_name)
    select s.user_phone, max(s.first_name)
    from jsonb_to_recordset(messages) as s (user_phone text, bsuid text, parent_bsuid text, chat text, first_name text)
    where s.user_phone is not null and s.bsuid is null and s.parent_bsuid is null and s.chat is null
    group by s.user_phone
    order by s.user_phone
    on conflict (phone_number) do update
        set first_name = excluded.first_name
        where u.first_name is null and excluded.first_name is not null;

    for m in
        select s.*, e.position
        from jsonb_array_elements(messages) with ordinality as e (message, position),
             lateral jsonb_to_record(e.message) as s (
                 user_phone text, bsuid text, parent_bsuid text, chat text, first_name text
             )
        where s.bsuid is not null or s.parent_bsuid is not null or s.chat is not null
        order by e.position
    loop
        by_phone := null; by_bsuid := null; by_parent := null; by_chat := null;
        if m.user_phone is not null then
            select u.id into by_phone from public.users as u where u.phone_number = m.user_phone;
        end if;
        if m.bsuid is not null then
            select i.user_id into by_bsuid from public.user_identities as i
            where i.kind = 'whatsapp' and i.value_sha256 = ingest_private.identity_hash(m.bsuid);
        end if;
        if m.parent_bsuid is not null then
            select i.user_id into by_parent from public.user_identities as i
            where i.kind = 'whatsapp_parent' and i.value_sha256 = ingest_private.identity_hash(m.parent_bsuid);
        end if;
        if m.chat is not null then
            select i.user_id into by_chat from public.user_identities as i
            where i.kind = 'chat' and i.value_sha256 = ingest_private.identity_hash(m.chat);
        end if;
        uid := coalesce(by_bsuid, by_chat, by_phone, by_parent);

        if uid is null then
            -- A phone's user is keyed by the phone, unless that key is taken (a user who once had
            -- this phone and has since been given another).
            insert into public.users (id, phone_number, first_name)
            values (
                case when m.user_phone is not null and not exists (select 1 from public.users where id = m.user_phone)
                     then m.user_phone end,
                m.user_phone,
                m.first_name
            )
            returning id into uid;
        else
            if m.user_phone is not null and by_phone is null then
                update public.users set phone_number = m.user_phone where id = uid and phone_number is null;
            end if;
            if m.first_name is not null then
                update public.users set first_name = m.first_name where id = uid and first_name is null;
            end if;
        end if;

        if m.bsuid is not null and by_bsuid is null then
            insert into public.user_identities (kind, value, user_id) values ('whatsapp', m.bsuid, uid)
            on conflict do nothing;
        end if;
        if m.parent_bsuid is not null and by_parent is null then
            insert into public.user_identities (kind, value, user_id) values ('whatsapp_parent', m.parent_bsuid, uid)
            on conflict do nothing;
        end if;
        if m.chat is not null and by_chat is null then
            insert into public.user_identities (kind, value, user_id) values ('chat', m.chat, uid)
            on conflict do nothing;
        end if;

        user_ids[m.position] := uid;
        user_phones[m.position] := (select u.phone_number from public.users as u where u.id = uid);
    end loop;

    perform ingest_private.insert_jobs(messages, user_ids, user_phones);
end;
$$;

revoke execute on function public.ingest_inbound(jsonb) from public, anon, authenticated;
grant execute on function public.ingest_inbound(jsonb) to service_role;

-- What `twilio-ingest check` reads about RLS and grants: user_identities too.
create or replace function public.ingest_schema_report()
returns table (table_name text, rls_enabled boolean, service_role_privileges text[], public_role_privileges text[])
language sql
stable
security invoker
set search_path = ''
as $$
    select c.relname::text,
           c.relrowsecurity,
           array(select p from unnest(array['select', 'insert', 'update']) as p
                 where has_table_privilege('service_role', c.oid, p)),
           array(select r || ':' || p
                 from unnest(array['anon', 'authenticated']) as r,
                      unnest(array['select', 'insert', 'update', 'delete']) as p
                 where has_table_privilege(r, c.oid, p))
    from pg_catalog.pg_class as c
    join pg_catalog.pg_namespace as n on n.oid = c.relnamespace
    where n.nspname = 'public' and c.relname in ('users', 'jobs', 'dlq_jobs', 'user_identities')
    order by c.relname;
$$;
