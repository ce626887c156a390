-- The schema as supabase/migrations leave it: generated, never edited by hand. The
-- migrations are what is applied; this is what they add up to. Regenerate with
-- `UPDATE_SCHEMA=1 cargo test --test it toolchain::supabase_schema_sql`.

create table public.dlq_jobs (
    id uuid default gen_random_uuid() not null,
    message_sid text,
    dedupe_key text not null,
    payload jsonb not null,
    error text not null,
    error_kind text not null,
    replayed_at timestamp with time zone,
    replay_error text,
    created_at timestamp with time zone default now() not null,
    received_at timestamp with time zone
);
alter table public.dlq_jobs enable row level security;

alter table public.dlq_jobs add constraint dlq_jobs_dedupe_key UNIQUE (dedupe_key);

alter table public.dlq_jobs add constraint dlq_jobs_error_kind CHECK ((error_kind = ANY (ARRAY['unusable'::text, 'rejected'::text])));

alter table public.dlq_jobs add constraint dlq_jobs_pkey PRIMARY KEY (id);

CREATE INDEX dlq_jobs_message_sid_idx ON public.dlq_jobs USING btree (message_sid);

CREATE INDEX dlq_jobs_pending_idx ON public.dlq_jobs USING btree (created_at) WHERE (replayed_at IS NULL);

grant delete, insert, select, update on table public.dlq_jobs to service_role;

create table public.jobs (
    id uuid default gen_random_uuid() not null,
    user_id text,
    source_channel_id text not null,
    source_type text not null,
    user_phone text,
    content_type text,
    payload jsonb not null,
    status text default 'pending'::text not null,
    message_sid text,
    created_at timestamp with time zone default now() not null,
    attempts integer default 0 not null,
    max_attempts integer default 5 not null,
    run_at timestamp with time zone default now() not null,
    locked_by text,
    locked_until timestamp with time zone,
    last_error text,
    result jsonb,
    updated_at timestamp with time zone default now() not null,
    completed_at timestamp with time zone,
    received_at timestamp with time zone default now() not null,
    reply_to text generated always as 
CASE
    WHEN (source_type = 'group'::text) THEN (payload ->> 'ConversationSid'::text)
    ELSE (payload ->> 'From'::text)
END stored
);
alter table public.jobs enable row level security;

alter table public.jobs add constraint jobs_lease_held CHECK (((status = 'processing'::text) = ((locked_by IS NOT NULL) AND (locked_until IS NOT NULL))));

alter table public.jobs add constraint jobs_max_attempts CHECK ((max_attempts >= 1));

alter table public.jobs add constraint jobs_message_sid_key UNIQUE (message_sid);

alter table public.jobs add constraint jobs_pkey PRIMARY KEY (id);

alter table public.jobs add constraint jobs_source_type CHECK ((source_type = ANY (ARRAY['dm'::text, 'group'::text])));

alter table public.jobs add constraint jobs_status CHECK ((status = ANY (ARRAY['pending'::text, 'processing'::text, 'complete'::text, 'failed'::text])));

alter table public.jobs add constraint jobs_user_id_fkey FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE;

CREATE INDEX jobs_channel_open_idx ON public.jobs USING btree (source_channel_id, received_at, id) WHERE ((status = ANY (ARRAY['pending'::text, 'processing'::text])) AND (source_channel_id IS NOT NULL));

CREATE INDEX jobs_channel_processing_idx ON public.jobs USING btree (source_channel_id) WHERE (status = 'processing'::text);

CREATE INDEX jobs_claim_idx ON public.jobs USING btree (run_at, received_at, id) WHERE (status = 'pending'::text);

CREATE INDEX jobs_failed_idx ON public.jobs USING btree (updated_at) WHERE (status = 'failed'::text);

CREATE INDEX jobs_lease_idx ON public.jobs USING btree (locked_until) WHERE (locked_until IS NOT NULL);

CREATE INDEX jobs_user_id_idx ON public.jobs USING btree (user_id);

CREATE TRIGGER jobs_guard_transition BEFORE UPDATE ON public.jobs FOR EACH ROW EXECUTE FUNCTION jobs_guard_transition();

grant delete, insert, select, update on table public.jobs to service_role;

create table public.user_identities (
    kind text not null,
    value text not null,
    value_sha256 bytea generated always as ingest_private.identity_hash(value) stored not null,
    user_id text not null,
    created_at timestamp with time zone default now() not null
);
alter table public.user_identities enable row level security;

alter table public.user_identities add constraint user_identities_kind CHECK ((kind = ANY (ARRAY['whatsapp'::text, 'whatsapp_parent'::text, 'chat'::text])));

alter table public.user_identities add constraint user_identities_pkey PRIMARY KEY (kind, value_sha256);

alter table public.user_identities add constraint user_identities_user_id_fkey FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE;

CREATE INDEX user_identities_user_id_idx ON public.user_identities USING btree (user_id);

grant delete, insert, select, update on table public.user_identities to service_role;

create table public.users (
    phone_number text,
    first_name text,
    created_at timestamp with time zone default now() not null,
    id text not null
);
alter table public.users enable row level security;

alter table public.users add constraint users_phone_number_e164 CHECK ((phone_number ~ '^\+[1-9][0-9]{6,14}$'::text));

alter table public.users add constraint users_phone_number_key UNIQUE (phone_number);

alter table public.users add constraint users_pkey PRIMARY KEY (id);

CREATE TRIGGER users_default_id BEFORE INSERT ON public.users FOR EACH ROW EXECUTE FUNCTION users_default_id();

CREATE TRIGGER users_erase_dead_letters BEFORE DELETE ON public.users FOR EACH ROW EXECUTE FUNCTION ingest_private.erase_dead_letters();

grant delete, insert, select, update on table public.users to service_role;

CREATE OR REPLACE FUNCTION public.claim_jobs(worker text, max_jobs integer DEFAULT 1, lease_seconds integer DEFAULT 300, source_types text[] DEFAULT NULL::text[])
 RETURNS SETOF jobs
 LANGUAGE plpgsql
 SET search_path TO ''
 SET enable_indexonlyscan TO 'off'
AS $function$
declare
    -- The jobs this claim has found and locked so far.
    taken uuid[];
    -- Jobs that may be their channel's next, oldest first, not yet locked.
    candidates uuid[];
    wanted integer;
    scan integer;
    seen integer;
begin
    -- Blanks (spaces, tabs, newlines) name no one.
    if worker is null or worker !~ '[^[:space:][:cntrl:]]' then
        raise exception 'claim_jobs: worker must name the worker' using errcode = '22023';
    end if;
    -- An empty or unknown filter would match nothing, for ever: a typo, not a wish.
    if source_types is not null and (
        cardinality(source_types) = 0
        or exists (select 1 from unnest(source_types) as t (type) where t.type is null or t.type not in ('dm', 'group'))
    ) then
        raise exception 'claim_jobs: source_types must be null or name dm and/or group' using errcode = '22023';
    end if;
    if max_jobs is null or max_jobs not between 1 and 1000 then
        raise exception 'claim_jobs: max_jobs must be between 1 and 1000' using errcode = '22023';
    end if;
    if lease_seconds is null or lease_seconds not between 1 and 86400 then
        raise exception 'claim_jobs: lease_seconds must be between 1 and 86400' using errcode = '22023';
    end if;

    -- A lease that ran out on a job's last attempt: its worker died holding it every time it had.
    -- Skip locked: another claim may be failing the same job right now. The rest wait for the
    -- next claim.
    update public.jobs as j
    set status = 'failed',
        last_error = format('lease expired on attempt %s of %s (worker %s)', j.attempts, j.max_attempts, j.locked_by)
    where j.id = any (array(
        select e.id
        from public.jobs as e
        where e.locked_until < now() and e.attempts >= e.max_attempts
        order by e.locked_until
        limit 100
        for update skip locked
    ));

    -- The jobs to hand out are found and locked first, pass by pass, and leased together at the
    -- end. Rows another claim has locked are skipped, not waited for.
    --
    -- Leases that ran out with attempts to spare: claim them again before newer work. Such a job
    -- was its channel's head when first claimed, and nothing after it has been handed out since.
    taken := array(
        select e.id
        from public.jobs as e
        where e.locked_until < now() and e.attempts < e.max_attempts
          and (source_types is null or e.source_type = any (source_types))
        order by e.locked_until
        limit max_jobs
        for update skip locked
    );

    -- Pending jobs whose turn has come: due (run_at has passed), the first open job of their
    -- channel in arrival order, and no job of their channel processing (an earlier job that came
    -- back while a later one runs waits for it). jobs_lock_pending asks all of it again of each
    -- job as it locks it, with the channel to itself.
    --
    -- First pass: the first `scan` due jobs, first due first. When most due jobs are their
    -- channel's first (many senders, a few messages each), this finds them at once and reads
    -- nothing else; when nothing is due it reads nothing at all. Only a channel's first job in
    -- the window can be its head, so there is one probe per channel, not one per job.
    wanted := max_jobs - cardinality(taken);
    scan := greatest(100, 2 * wanted);
    if wanted > 0 then
        select count(*)::integer,
               array_agg(w.id order by w.run_at, w.received_at, w.id) filter (
                   where w.first_in_window and (
                       select 1
                       from public.jobs as earlier
                       where earlier.source_channel_id = w.source_channel_id
                         and earlier.status in ('pending', 'processing')
                         and (earlier.received_at, earlier.id) < (w.received_at, w.id)
                       limit 1
                   ) is null and (
                       select 1
                       from public.jobs as busy
                       where busy.source_channel_id = w.source_channel_id and busy.status = 'processing'
                       limit 1
                   ) is null
               )
        into seen, candidates
        from (
            select w.*,
                   row_number() over (partition by w.source_channel_id order by w.received_at, w.id) = 1
                       as first_in_window
            from (
                select w.id, w.source_channel_id, w.received_at, w.run_at
                from public.jobs as w
                where w.status = 'pending' and w.run_at <= now()
                  and (source_types is null or w.source_type = any (source_types))
                order by w.run_at, w.received_at, w.id
                limit scan
            ) as w
        ) as w;
        taken := taken || public.jobs_lock_pending(candidates, wanted);
    end if;

    -- Nothing could go, and the window was full: due jobs lie beyond it, behind channels that
    -- are busy (a few channels with long backlogs at the front of the queue). (A window that was
    -- not full held every due job, so there is nothing more to find.) Walking them all would cost
    -- the whole backlog on every poll, so find each open channel's first job instead, skipping
    -- from channel to channel through jobs_channel_open_idx: a cost of open channels, not jobs.
    -- A claim that found some jobs (in its window, or leases that ran out) returns those without
    -- this walk: they are the oldest that can go, and the walk costs more than the rest of the
    -- claim. So an empty answer means nothing can go; a short one, only that the worker should
    -- come back.
    if cardinality(taken) = 0 and seen = scan then
        candidates := array(
            with recursive channels (channel) as (
                (
                    select o.source_channel_id
                    from public.jobs as o
                    -- `>= ''` holds for every channel; it is what lets this use jobs_channel_open_idx.
                    where o.status in ('pending', 'processing') and o.source_channel_id >= ''
                    order by o.source_channel_id
                    limit 1
                )
                union all
                select (
                    select o.source_channel_id
                    from public.jobs as o
                    where o.status in ('pending', 'processing') and o.source_channel_id > c.channel
                    order by o.source_channel_id
                    limit 1
                )
                from channels as c
                where c.channel is not null
            )
            select h.id
            from channels as c
            cross join lateral (
                select o.id, o.status, o.run_at, o.received_at, o.source_type
                from public.jobs as o
                where o.source_channel_id = c.channel and o.status in ('pending', 'processing')
                order by o.received_at, o.id
                limit 1
            ) as h
            where h.status = 'pending' and h.run_at <= now()
              and (source_types is null or h.source_type = any (source_types))
              and (
                  select 1
                  from public.jobs as busy
                  where busy.source_channel_id = c.channel and busy.status = 'processing'
                  limit 1
              ) is null
            order by h.run_at, h.received_at, h.id
        );
        taken := public.jobs_lock_pending(candidates, max_jobs);
    end if;

    -- Every job found is locked by this transaction: lease them all, oldest first.
    return query
    with claimed as (
        update public.jobs as j
        set status = 'processing',
            attempts = j.attempts + 1,
            locked_by = worker,
            locked_until = now() + make_interval(secs => lease_seconds)
        where j.id = any (taken)
        returning j.*
    )
    select * from claimed order by claimed.run_at, claimed.received_at, claimed.id;
end;
$function$;
grant execute on function public.claim_jobs(worker text, max_jobs integer, lease_seconds integer, source_types text[]) to service_role;

CREATE OR REPLACE FUNCTION public.complete_jobs(worker text, jobs jsonb)
 RETURNS SETOF uuid
 LANGUAGE sql
 SET search_path TO ''
AS $function$
    update public.jobs as j
    set status = 'complete',
        result = c.result,
        completed_at = now()
    from (
        select distinct on (e.id::uuid) e.id::uuid as id, e.result
        from (
            select x.item ->> 'id' as id, x.item -> 'result' as result, x.position
            from jsonb_array_elements(jobs) with ordinality as x (item, position)
            where jsonb_typeof(x.item) = 'object' and pg_catalog.pg_input_is_valid(x.item ->> 'id', 'uuid')
        ) as e
        order by e.id::uuid, e.position
    ) as c
    where j.id = c.id and j.locked_by = worker
    returning j.id;
$function$;
grant execute on function public.complete_jobs(worker text, jobs jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.extend_job_lease(id uuid, worker text, lease_seconds integer)
 RETURNS boolean
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
begin
    if lease_seconds is null or lease_seconds not between 1 and 86400 then
        raise exception 'extend_job_lease: lease_seconds must be between 1 and 86400' using errcode = '22023';
    end if;
    update public.jobs as j
    set locked_until = greatest(j.locked_until, now() + make_interval(secs => lease_seconds))
    where j.id = extend_job_lease.id and j.locked_by = extend_job_lease.worker;
    return found;
end;
$function$;
grant execute on function public.extend_job_lease(id uuid, worker text, lease_seconds integer) to service_role;

CREATE OR REPLACE FUNCTION public.fail_job(id uuid, worker text, error text, retry_in_seconds integer DEFAULT NULL::integer, permanent boolean DEFAULT false)
 RETURNS text
 LANGUAGE sql
 SET search_path TO ''
AS $function$
    -- Null when the worker no longer holds the job (its lease ran out and another claimed it).
    update public.jobs as j
    set status = case when coalesce(permanent, false) or j.attempts >= j.max_attempts then 'failed' else 'pending' end,
        run_at = case
            when coalesce(permanent, false) or j.attempts >= j.max_attempts then j.run_at
            when retry_in_seconds is not null then now() + make_interval(secs => greatest(retry_in_seconds, 0))
            else now() + public.job_retry_backoff(j.attempts)
        end,
        last_error = coalesce(fail_job.error, 'failed without an error message')
    where j.id = fail_job.id and j.locked_by = fail_job.worker
    returning j.status;
$function$;
grant execute on function public.fail_job(id uuid, worker text, error text, retry_in_seconds integer, permanent boolean) to service_role;

CREATE OR REPLACE FUNCTION public.ingest_batch(jsonb)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
    messages alias for $1;
begin
    -- An existing user's row stays locked until commit even when the WHERE leaves it unchanged,
    -- so two batches for the same user take turns; sorted, so they lock in the same order and
    -- cannot deadlock. The lock is FOR NO KEY UPDATE, which the foreign key checks (FOR KEY SHARE)
    -- do not wait on.
    insert into public.users as u (phone_number, first_name)
    select m.user_phone, max(m.first_name)
    from jsonb_to_recordset(messages) as m (user_phone text, first_name text)
    group by m.user_phone
    order by m.user_phone
    on conflict (phone_number) do update
        set first_name = excluded.first_name
        where u.first_name is null and excluded.first_name is not null;

    perform public.ingest_jobs(messages);
end;
$function$;
grant execute on function public.ingest_batch(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.ingest_function_report()
 RETURNS TABLE(function_name text, public_role_privileges text[])
 LANGUAGE sql
 STABLE
 SET search_path TO ''
AS $function$
    select p.proname::text,
           array(select r from unnest(array['anon', 'authenticated']) as r
                 where has_function_privilege(r, p.oid, 'execute'))
    from pg_catalog.pg_proc as p
    join pg_catalog.pg_namespace as n on n.oid = p.pronamespace
    where n.nspname = 'public'
    order by p.proname;
$function$;
grant execute on function public.ingest_function_report() to service_role;

CREATE OR REPLACE FUNCTION public.ingest_inbound(jsonb)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.ingest_inbound(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.ingest_jobs(jsonb)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
begin
    perform ingest_private.insert_jobs($1, null, null);
end;
$function$;
grant execute on function public.ingest_jobs(jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.ingest_messages(messages jsonb)
 RETURNS SETOF text
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.ingest_messages(messages jsonb) to service_role;

CREATE OR REPLACE FUNCTION public.ingest_schema_report()
 RETURNS TABLE(table_name text, rls_enabled boolean, service_role_privileges text[], public_role_privileges text[])
 LANGUAGE sql
 STABLE
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function public.ingest_schema_report() to service_role;

CREATE OR REPLACE FUNCTION public.job_queue_stats()
 RETURNS TABLE(source_type text, status text, jobs bigint, oldest timestamp with time zone)
 LANGUAGE sql
 STABLE
 SET search_path TO ''
AS $function$
    select j.source_type, j.status, count(*), min(j.received_at)
    from public.jobs as j
    group by j.source_type, j.status
    order by j.source_type, j.status;
$function$;
grant execute on function public.job_queue_stats() to service_role;

CREATE OR REPLACE FUNCTION public.job_retry_backoff(attempts integer)
 RETURNS interval
 LANGUAGE sql
 SET search_path TO ''
AS $function$
    select make_interval(secs => least(3600, power(greatest(attempts, 1), 4)) * (0.9 + random() * 0.2));
$function$;
grant execute on function public.job_retry_backoff(attempts integer) to service_role;

CREATE OR REPLACE FUNCTION public.jobs_guard_transition()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
begin
    if old.status in ('complete', 'failed') then
        if old.status = 'failed' and new.status = 'pending'
           and current_user = (select pg_catalog.pg_get_userbyid(c.relowner) from pg_catalog.pg_class as c where c.oid = tg_relid) then
            null;
        else
            raise exception 'job % is %, which is final', old.id, old.status
                using errcode = '23514', hint = 'retry_failed_jobs requeues failed jobs';
        end if;
    elsif new.status is distinct from old.status
        and not (old.status = 'pending' and new.status in ('processing', 'failed'))
        and not (old.status = 'processing' and new.status in ('pending', 'complete', 'failed')) then
        raise exception 'job %: % -> % is not a queue transition', old.id, old.status, new.status
            using errcode = '23514';
    end if;
    if new.status <> 'processing' then
        new.locked_by := null;
        new.locked_until := null;
    end if;
    new.updated_at := now();
    return new;
end;
$function$;
-- no one but the owner may run it

CREATE OR REPLACE FUNCTION public.jobs_lock_pending(candidates uuid[], wanted integer)
 RETURNS uuid[]
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
    taken uuid[] := '{}';
    candidate uuid;
    channel text;
    locked uuid;
begin
    foreach candidate in array coalesce(candidates, '{}') loop
        exit when cardinality(taken) >= wanted;
        select j.source_channel_id into channel from public.jobs as j where j.id = candidate;
        continue when not found;
        -- 7261: this queue's channels, apart from any other advisory lock in the database.
        continue when not pg_try_advisory_xact_lock(7261, hashtext(channel));
        -- Its own statement, so its snapshot is taken now, with the channel held.
        select p.id into locked
        from (
            select j.id, j.status, j.run_at, j.received_at
            from public.jobs as j
            where j.id = candidate
            -- A fence: without it the planner moves the conditions below in here, where a partial
            -- index on pending jobs then looks like a way to find the id.
            limit 1
            for update skip locked
        ) as p
        where p.status = 'pending' and p.run_at <= now()
          and (
              select 1
              from public.jobs as earlier
              where earlier.source_channel_id = channel
                and earlier.status in ('pending', 'processing')
                and (earlier.received_at, earlier.id) < (p.received_at, p.id)
              limit 1
          ) is null
          and (
              select 1
              from public.jobs as busy
              where busy.source_channel_id = channel and busy.status = 'processing'
              limit 1
          ) is null;
        if found then
            taken := taken || locked;
        end if;
    end loop;
    return taken;
end;
$function$;
grant execute on function public.jobs_lock_pending(candidates uuid[], wanted integer) to service_role;

CREATE OR REPLACE FUNCTION public.retry_failed_jobs(ids uuid[] DEFAULT NULL::uuid[], since timestamp with time zone DEFAULT NULL::timestamp with time zone)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
declare
    requeued bigint;
begin
    update public.jobs as j
    set status = 'pending', attempts = 0, run_at = now(), locked_by = null, locked_until = null
    where j.status = 'failed'
      and (ids is null or j.id = any (ids))
      and (since is null or j.updated_at >= since);
    get diagnostics requeued = row_count;
    if requeued > 0 then
        perform pg_notify('jobs', json_build_object('requeued', requeued)::text);
    end if;
    return requeued;
end;
$function$;
grant execute on function public.retry_failed_jobs(ids uuid[], since timestamp with time zone) to service_role;

CREATE OR REPLACE FUNCTION public.users_default_id()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
begin
    if new.id is null then
        new.id := coalesce(new.phone_number, 'usr_' || replace(gen_random_uuid()::text, '-', ''));
    end if;
    return new;
end;
$function$;
-- no one but the owner may run it

CREATE OR REPLACE FUNCTION ingest_private.erase_dead_letters()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
    addresses text[];
begin
    addresses := array(
        select old.phone_number where old.phone_number is not null
        union
        select i.value from public.user_identities as i where i.user_id = old.id
    );
    if cardinality(addresses) = 0 then
        return old;
    end if;
    delete from public.dlq_jobs as d
    where exists (
        select 1
        from unnest(array['From', 'Author', 'ExternalUserId', 'ParentExternalUserId']) as f (param)
        where d.payload ->> f.param = any (addresses)
           or pg_catalog.regexp_replace(d.payload ->> f.param, '^[a-z]+:', '') = any (addresses)
    )
    or (
        d.payload ->> 'twilio_ingest_encoded' = 'json'
        and exists (select 1 from unnest(addresses) as a (address)
                    where pg_catalog.strpos(d.payload ->> 'json', pg_catalog.to_json(a.address)::text) > 0)
    );
    return old;
end;
$function$;
-- no one but the owner may run it

CREATE OR REPLACE FUNCTION ingest_private.identity_hash(value text)
 RETURNS bytea
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE STRICT
 SET search_path TO ''
RETURN sha256(convert_to(value, 'UTF8'::name));
grant execute on function ingest_private.identity_hash(value text) to service_role;

CREATE OR REPLACE FUNCTION ingest_private.insert_jobs(messages jsonb, user_ids text[], user_phones text[])
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
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
$function$;
grant execute on function ingest_private.insert_jobs(messages jsonb, user_ids text[], user_phones text[]) to service_role;

CREATE OR REPLACE FUNCTION ingest_private.missing_user()
 RETURNS text
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
begin
    raise exception 'a job''s user is not stored' using errcode = '23503';
end;
$function$;
grant execute on function ingest_private.missing_user() to service_role;
