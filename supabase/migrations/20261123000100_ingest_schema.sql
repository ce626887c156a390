-- twilio-ingest: users keyed by phone number, one job per inbound message, and dead letters.
--
-- Hosted projects created since 2026-05-30 grant nothing on new public tables by default, and
-- older ones grant everything to anon and authenticated. So this migration revokes from those
-- two whatever a default may have given them and grants the service role exactly what it needs;
-- it applies the same either way. RLS is on everywhere, with no policies: only service_role
-- (BYPASSRLS) reads or writes these tables.

create table public.users (
    phone_number text primary key
        constraint users_phone_number_e164 check (phone_number ~ '^\+[1-9][0-9]{6,14}$'),
    first_name text,
    created_at timestamptz not null default now()
);

create table public.jobs (
    id uuid primary key default gen_random_uuid(),
    user_id text not null references public.users (phone_number),
    source_channel_id text not null,
    source_type text not null constraint jobs_source_type check (source_type in ('dm', 'group')),
    user_phone text not null,
    content_type text,
    -- The webhook params as Twilio sent them; a repeated key is an array.
    payload jsonb not null,
    status text not null default 'pending'
        constraint jobs_status check (status in ('pending', 'processing', 'complete', 'failed')),
    -- Twilio retries and re-sends carry the same MessageSid: it may make one job, never two.
    message_sid text constraint jobs_message_sid_key unique,
    created_at timestamptz not null default now()
);

-- What the downstream worker polls: the oldest pending jobs.
create index jobs_pending_idx on public.jobs (created_at) where status = 'pending';
create index jobs_user_id_idx on public.jobs (user_id);

create table public.dlq_jobs (
    id uuid primary key default gen_random_uuid(),
    -- Null when the webhook had none.
    message_sid text,
    -- The MessageSid, or a hash of the payload when there is none: a message is dead-lettered
    -- once, however often a retry or a spool replay brings it back.
    dedupe_key text not null constraint dlq_jobs_dedupe_key unique,
    -- Everything needed to replay: the webhook params as received.
    payload jsonb not null,
    error text not null,
    -- 'unusable': the webhook cannot become a job (no sender...); 'rejected': Supabase refused it.
    error_kind text not null constraint dlq_jobs_error_kind check (error_kind in ('unusable', 'rejected')),
    replayed_at timestamptz,
    replay_error text,
    created_at timestamptz not null default now()
);

create index dlq_jobs_pending_idx on public.dlq_jobs (created_at) where replayed_at is null;
create index dlq_jobs_message_sid_idx on public.dlq_jobs (message_sid);

alter table public.users enable row level security;
alter table public.jobs enable row level security;
alter table public.dlq_jobs enable row level security;

revoke all on table public.users, public.jobs, public.dlq_jobs from anon, authenticated;
grant select, insert, update, delete on table public.users, public.jobs, public.dlq_jobs to service_role;

-- One round trip per batch of messages: create the users that are new, give a name to a user who
-- has none, and insert the jobs, skipping any MessageSid that already has one. Returns the
-- MessageSids that became new jobs. One statement, so the batch is parsed once; PL/pgSQL rather
-- than SQL because it caches the statement's plan for the session, where a SQL function plans it
-- on every call (a third of the call's time for a small batch). Security invoker, so it can do no
-- more than the caller's grants allow.
create function public.ingest_messages(messages jsonb)
returns setof text
language plpgsql
volatile
security invoker
set search_path = ''
as $$
begin
    return query
    with m as materialized (
        select *
        from jsonb_to_recordset(messages) as m (
            message_sid text, user_phone text, first_name text, source_type text,
            source_channel_id text, content_type text, payload jsonb
        )
    ),
    new_users as (
        -- Sorted, so concurrent batches take their locks in the same order and cannot deadlock.
        -- DO NOTHING takes no lock on a user who already exists.
        insert into public.users (phone_number, first_name)
        select m.user_phone, max(m.first_name) from m group by m.user_phone order by m.user_phone
        on conflict (phone_number) do nothing
    ),
    named as (
        -- An existing user keeps their name; one without gets it from their WhatsApp profile.
        update public.users as u
        set first_name = n.first_name
        from (
            select m.user_phone, max(m.first_name) as first_name
            from m
            where m.first_name is not null
            group by m.user_phone
        ) as n
        where u.phone_number = n.user_phone and u.first_name is null
    )
    insert into public.jobs (message_sid, user_id, user_phone, source_type, source_channel_id, content_type, payload)
    select m.message_sid, m.user_phone, m.user_phone, m.source_type, m.source_channel_id, m.content_type, m.payload
    from m
    on conflict (message_sid) do nothing
    returning jobs.message_sid;
end;
$$;

revoke execute on function public.ingest_messages(jsonb) from public, anon, authenticated;
grant execute on function public.ingest_messages(jsonb) to service_role;

-- What `twilio-ingest check` reads to confirm the tables are locked down as above: RLS on, the
-- service role able to do its work, anon and authenticated able to do nothing.
create function public.ingest_schema_report()
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
    where n.nspname = 'public' and c.relname in ('users', 'jobs', 'dlq_jobs')
    order by c.relname;
$$;

revoke execute on function public.ingest_schema_report() from public, anon, authenticated;
grant execute on function public.ingest_schema_report() to service_role;
