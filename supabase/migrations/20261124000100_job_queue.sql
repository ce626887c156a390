-- Partly superseded: claim_jobs, complete_jobs, fail_job, extend_job_lease, jobs_guard_transition,
-- jobs_lease_idx and jobs_channel_open_idx are replaced in 20261124000200_queue_plans.sql, whose
-- plans do not depend on statistics; supabase/README.md keeps the map. What follows is kept as it
-- was applied: an applied migration's statements are never changed.
--
-- The jobs as a work queue: workers claim, complete and fail jobs through PostgREST RPC, with
-- leases, attempts, retries with backoff, and each channel's jobs one at a time in arrival order.
--
-- The contract (names and parameters are what workers call; see the README's "Processing jobs"):
--   claim_jobs(worker, max_jobs, lease_seconds, source_types) -> setof jobs
--   complete_jobs(worker, jobs)                               -> setof uuid
--   fail_job(id, worker, error, retry_in_seconds, permanent)  -> text (the new status)
--   extend_job_lease(id, worker, lease_seconds)               -> boolean
--   job_queue_stats()                                         -> (source_type, status, jobs, oldest)
--   retry_failed_jobs(ids, since)                             -> bigint
--
-- PostgREST holds no session between calls, so a claim is a lease (a time), not a lock: a job whose
-- worker died becomes claimable again when its lease runs out.
--
-- Deploy order: this migration first, then the release. A release before it still ingests (the
-- old ingest_jobs ignores the arrival time it sends); the release before this one keeps working
-- after it (ingest_jobs takes its jobs' arrival time as the moment it inserts them).

alter table public.jobs
    add column attempts integer not null default 0,
    add column max_attempts integer not null default 5 constraint jobs_max_attempts check (max_attempts >= 1),
    -- When a pending job may be claimed: now, or after a retry's backoff.
    add column run_at timestamptz not null default now(),
    add column locked_by text,
    add column locked_until timestamptz,
    add column last_error text,
    add column result jsonb,
    add column updated_at timestamptz not null default now(),
    add column completed_at timestamptz,
    -- The moment the service received the webhook, taken at its edge and kept through the spool
    -- and the dead-letter table, so a message that waited out an outage keeps its place. Each
    -- process makes these strictly increasing, so the jobs of one batch (which share created_at)
    -- keep the order they arrived in; id breaks ties between processes.
    add column received_at timestamptz;

update public.jobs set received_at = created_at;
alter table public.jobs alter column received_at set default now(), alter column received_at set not null;

alter table public.dlq_jobs add column received_at timestamptz;

-- Deleting a user (an erasure request) deletes their jobs: a job is the user's message, payload
-- and all, and keeping it would keep what the user asked to be forgotten. A worker holding such a
-- job finds that complete_jobs no longer returns it.
alter table public.jobs drop constraint jobs_user_id_fkey;
alter table public.jobs add constraint jobs_user_id_fkey
    foreign key (user_id) references public.users (phone_number) on delete cascade not valid;
alter table public.jobs validate constraint jobs_user_id_fkey;

-- claim_jobs walks the pending jobs that are due, in the order they became due, and stops after
-- max_jobs: a range scan of this index that ends at now(), never a sort of the whole queue, and
-- nothing at all to read when no job is due (jobs waiting for a retry are past the range's end).
-- The old index (created_at) could not order a batch's jobs, which share created_at.
drop index public.jobs_pending_idx;
create index jobs_claim_idx on public.jobs (run_at, received_at, id) where status = 'pending';
-- "Is an earlier job of this channel still open?" is one probe of this index.
create index jobs_channel_open_idx on public.jobs (source_channel_id, received_at, id)
    where status in ('pending', 'processing');
-- Leases that ran out: jobs whose worker died.
create index jobs_lease_idx on public.jobs (locked_until) where status = 'processing';
-- retry_failed_jobs and the dashboards look for failed jobs by when they failed.
create index jobs_failed_idx on public.jobs (updated_at) where status = 'failed';

-- The queue's state machine, enforced whoever writes: a worker calling these functions, or one
-- PATCHing the table directly. pending -> processing (a claim); processing -> pending (a retry),
-- complete or failed; pending -> failed (given up before a claim). complete and failed are final:
-- only retry_failed_jobs moves failed back to pending.
create function public.jobs_guard_transition()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    if old.status in ('complete', 'failed') then
        if not (old.status = 'failed' and new.status = 'pending'
                and current_setting('twilio_ingest.requeue', true) = 'on') then
            raise exception 'job % is %, which is final', old.id, old.status
                using errcode = '23514', hint = 'retry_failed_jobs requeues failed jobs';
        end if;
    elsif new.status is distinct from old.status
        and not (old.status = 'pending' and new.status in ('processing', 'failed'))
        and not (old.status = 'processing' and new.status in ('pending', 'complete', 'failed')) then
        raise exception 'job %: % -> % is not a queue transition', old.id, old.status, new.status
            using errcode = '23514';
    end if;
    new.updated_at := now();
    return new;
end;
$$;

revoke execute on function public.jobs_guard_transition() from public, anon, authenticated;

create trigger jobs_guard_transition
    before update on public.jobs
    for each row execute function public.jobs_guard_transition();

create function public.claim_jobs(
    worker text,
    max_jobs integer default 1,
    lease_seconds integer default 300,
    source_types text[] default null
)
returns setof public.jobs
language plpgsql
volatile
security invoker
set search_path = ''
-- Claimed and completed jobs leave dead entries at the front of the indexes claims walk, until
-- vacuum comes. A plain index scan marks each dead entry it meets (LP_DEAD) so that later scans
-- skip it; an index-only scan does not, and so would visit every one of them again on every claim.
set enable_indexonlyscan = off
as $$
declare
    -- The jobs this claim has found and locked so far.
    taken uuid[];
    wanted integer;
    scan integer;
begin
    if coalesce(worker, '') = '' then
        raise exception 'claim_jobs: worker must name the worker' using errcode = '22023';
    end if;
    if max_jobs is null or max_jobs not between 1 and 1000 then
        raise exception 'claim_jobs: max_jobs must be between 1 and 1000' using errcode = '22023';
    end if;
    if lease_seconds is null or lease_seconds not between 1 and 86400 then
        raise exception 'claim_jobs: lease_seconds must be between 1 and 86400' using errcode = '22023';
    end if;

    -- A lease that ran out on a job's last attempt: its worker died holding it every time it had.
    -- Skip locked: another claim may be failing the same job right now.
    update public.jobs as j
    set status = 'failed',
        last_error = format('lease expired on attempt %s of %s (worker %s)', j.attempts, j.max_attempts, j.locked_by),
        locked_by = null,
        locked_until = null
    where j.id in (
        select e.id
        from public.jobs as e
        where e.status = 'processing' and e.locked_until < now() and e.attempts >= e.max_attempts
        for update skip locked
    );

    -- The jobs to hand out are found and locked first, pass by pass, and leased together at the
    -- end. Rows another claim has locked are skipped, not waited for.
    --
    -- Leases that ran out with attempts to spare: claim them again before newer work. Such a job
    -- was its channel's head when first claimed, and nothing after it has been handed out since.
    taken := array(
        select e.id
        from public.jobs as e
        where e.status = 'processing' and e.locked_until < now() and e.attempts < e.max_attempts
          and (source_types is null or e.source_type = any (source_types))
        order by e.locked_until
        limit max_jobs
        for update skip locked
    );

    -- Pending jobs whose turn has come: due (run_at has passed) and the first open job of their
    -- channel in arrival order. Because a claimed job stays open (processing), the next job of
    -- its channel fails the NOT EXISTS for every other claim until it is complete or failed.
    --
    -- First pass: the first `scan` due jobs, first due first. When most due jobs are their
    -- channel's first (many senders, a few messages each), this finds them at once and reads
    -- nothing else; when nothing is due it reads nothing at all.
    wanted := max_jobs - cardinality(taken);
    scan := greatest(100, 2 * wanted);
    if wanted > 0 then
        taken := taken || array(
            -- Only the window's heads are fetched again by key, to be locked; the rest are not.
            select p.id
            from public.jobs as p
            where p.id = any (array(
                  select w.id
                  from (
                      -- Only a channel's first job in the window can be its head: one probe a
                      -- channel, not one a job, when a few busy channels fill the window.
                      select distinct on (w.source_channel_id) w.id, w.source_channel_id, w.received_at
                      from (
                          select w.id, w.source_channel_id, w.received_at, w.run_at
                          from public.jobs as w
                          where w.status = 'pending' and w.run_at <= now()
                            and (source_types is null or w.source_type = any (source_types))
                          order by w.run_at, w.received_at, w.id
                          limit scan
                      ) as w
                      order by w.source_channel_id, w.received_at, w.id
                  ) as w
                  where not exists (
                      select
                      from public.jobs as earlier
                      where earlier.source_channel_id = w.source_channel_id
                        and earlier.status in ('pending', 'processing')
                        and (earlier.received_at, earlier.id) < (w.received_at, w.id)
                  )
              ))
              and p.status = 'pending'
            order by p.run_at, p.received_at, p.id
            limit wanted
            for update skip locked
        );
    end if;

    -- Fewer than wanted: the due jobs the window did not reach, or those behind channels that
    -- are busy (a few channels with long backlogs). Walking them all would cost the whole backlog
    -- on every poll, so find each open channel's first job instead, skipping from channel to
    -- channel through jobs_channel_open_idx: a cost of open channels, not jobs. Unless nothing is
    -- due at all (every pending job waits for a retry), which one probe of jobs_claim_idx says.
    wanted := max_jobs - cardinality(taken);
    if wanted > 0 and exists (
        select
        from public.jobs as w
        where w.status = 'pending' and w.run_at <= now()
          and (source_types is null or w.source_type = any (source_types))
    ) then
        taken := taken || array(
            with recursive channels (channel) as (
                select min(o.source_channel_id) from public.jobs as o where o.status in ('pending', 'processing')
                union all
                select (
                    select min(o.source_channel_id)
                    from public.jobs as o
                    where o.status in ('pending', 'processing') and o.source_channel_id > c.channel
                )
                from channels as c
                where c.channel is not null
            ),
            heads as (
                select h.id
                from channels as c
                cross join lateral (
                    select o.id, o.status, o.run_at, o.source_type
                    from public.jobs as o
                    where o.source_channel_id = c.channel and o.status in ('pending', 'processing')
                    order by o.received_at, o.id
                    limit 1
                ) as h
                where h.status = 'pending' and h.run_at <= now()
                  and (source_types is null or h.source_type = any (source_types))
            )
            select p.id
            from public.jobs as p
            -- The first pass's heads are still pending: they are this claim's already.
            where p.id = any (array(select heads.id from heads)) and p.id <> all (taken)
              and p.status = 'pending'
            order by p.run_at, p.received_at, p.id
            limit wanted
            for update skip locked
        );
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
$$;

create function public.complete_jobs(worker text, jobs jsonb)
returns setof uuid
language sql
volatile
security invoker
set search_path = ''
as $$
    update public.jobs as j
    set status = 'complete',
        result = c.result,
        completed_at = now(),
        locked_by = null,
        locked_until = null
    from jsonb_to_recordset(jobs) as c (id uuid, result jsonb)
    where j.id = c.id and j.status = 'processing' and j.locked_by = worker
    returning j.id;
$$;

-- River's and Oban's backoff: attempts^4 seconds (1 s, 16 s, 81 s, 4 min, 10 min, ...) with 10%
-- jitter either way, so jobs that failed together do not come back together; at most an hour.
create function public.job_retry_backoff(attempts integer)
returns interval
language sql
volatile
set search_path = ''
as $$
    select make_interval(secs => least(3600, power(greatest(attempts, 1), 4)) * (0.9 + random() * 0.2));
$$;

revoke execute on function public.job_retry_backoff(integer) from public, anon, authenticated;
grant execute on function public.job_retry_backoff(integer) to service_role;

create function public.fail_job(
    id uuid,
    worker text,
    error text,
    retry_in_seconds integer default null,
    permanent boolean default false
)
returns text
language sql
volatile
security invoker
set search_path = ''
as $$
    -- Null when the worker no longer holds the job (its lease ran out and another claimed it).
    update public.jobs as j
    set status = case when coalesce(permanent, false) or j.attempts >= j.max_attempts then 'failed' else 'pending' end,
        run_at = case
            when coalesce(permanent, false) or j.attempts >= j.max_attempts then j.run_at
            when retry_in_seconds is not null then now() + make_interval(secs => greatest(retry_in_seconds, 0))
            else now() + public.job_retry_backoff(j.attempts)
        end,
        last_error = coalesce(fail_job.error, 'failed without an error message'),
        locked_by = null,
        locked_until = null
    where j.id = fail_job.id and j.status = 'processing' and j.locked_by = fail_job.worker
    returning j.status;
$$;

create function public.extend_job_lease(id uuid, worker text, lease_seconds integer)
returns boolean
language sql
volatile
security invoker
set search_path = ''
as $$
    with extended as (
        update public.jobs as j
        set locked_until = now() + make_interval(secs => least(greatest(lease_seconds, 1), 86400))
        where j.id = extend_job_lease.id and j.status = 'processing' and j.locked_by = extend_job_lease.worker
        returning j.id
    )
    select exists (select from extended);
$$;

create function public.job_queue_stats()
returns table (source_type text, status text, jobs bigint, oldest timestamptz)
language sql
stable
security invoker
set search_path = ''
as $$
    select j.source_type, j.status, count(*), min(j.received_at)
    from public.jobs as j
    group by j.source_type, j.status
    order by j.source_type, j.status;
$$;

create function public.retry_failed_jobs(ids uuid[] default null, since timestamptz default null)
returns bigint
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
    requeued bigint;
begin
    -- The one way out of `failed`: jobs_guard_transition lets it through for this transaction.
    perform set_config('twilio_ingest.requeue', 'on', true);
    update public.jobs as j
    set status = 'pending', attempts = 0, run_at = now(), locked_by = null, locked_until = null
    where j.status = 'failed'
      and (ids is null or j.id = any (ids))
      and (since is null or j.updated_at >= since);
    get diagnostics requeued = row_count;
    perform set_config('twilio_ingest.requeue', 'off', true);
    if requeued > 0 then
        perform pg_notify('jobs', json_build_object('requeued', requeued)::text);
    end if;
    return requeued;
end;
$$;

-- ingest_jobs now stores each job's arrival time (sent as microseconds since the epoch, exact where
-- a float would round) and wakes LISTENing workers once per batch that wrote something.
create or replace function public.ingest_jobs(jsonb)
returns void
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
    messages alias for $1;
    written bigint;
    duplicates text;
begin
    -- Sorted: two batches holding the same two MessageSids (a retry racing its original) would
    -- otherwise wait on each other's unique-index entries.
    insert into public.jobs (
        message_sid, user_id, user_phone, source_type, source_channel_id, content_type, payload, received_at
    )
    select m.message_sid, m.user_phone, m.user_phone, m.source_type, m.source_channel_id, m.content_type, m.payload,
           coalesce(timestamptz 'epoch' + m.received_at_us * interval '1 microsecond', clock_timestamp())
    from jsonb_to_recordset(messages) as m (
        message_sid text, user_phone text, source_type text, source_channel_id text, content_type text,
        payload jsonb, received_at_us bigint
    )
    order by m.message_sid
    on conflict (message_sid) do nothing;
    get diagnostics written = row_count;

    if written > 0 then
        perform pg_notify('jobs', json_build_object('inserted', written)::text);
    end if;

    if written < jsonb_array_length(messages) then
        -- Rare (a Twilio retry, a replay), so the common path counts rows rather than collecting
        -- them with RETURNING. The jobs that existed before this call are those this transaction
        -- did not write. A MessageSid twice in one batch is written once and so is not reported;
        -- the caller knows its second occurrence is a repeat. Dynamic SQL, so it is planned for
        -- the table as it is now: a plan cached while jobs was small would be a sequential scan.
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

-- What `twilio-ingest check` reads to confirm no function of the project's can be run by anon or
-- authenticated: every function in `public`, with the roles of those two that may execute it.
create function public.ingest_function_report()
returns table (function_name text, public_role_privileges text[])
language sql
stable
security invoker
set search_path = ''
as $$
    select p.proname::text,
           array(select r from unnest(array['anon', 'authenticated']) as r
                 where has_function_privilege(r, p.oid, 'execute'))
    from pg_catalog.pg_proc as p
    join pg_catalog.pg_namespace as n on n.oid = p.pronamespace
    where n.nspname = 'public'
    order by p.proname;
$$;

revoke execute on function
    public.ingest_function_report(),
    public.claim_jobs(text, integer, integer, text[]),
    public.complete_jobs(text, jsonb),
    public.fail_job(uuid, text, text, integer, boolean),
    public.extend_job_lease(uuid, text, integer),
    public.job_queue_stats(),
    public.retry_failed_jobs(uuid[], timestamptz)
from public, anon, authenticated;
grant execute on function
    public.ingest_function_report(),
    public.claim_jobs(text, integer, integer, text[]),
    public.complete_jobs(text, jsonb),
    public.fail_job(uuid, text, text, integer, boolean),
    public.extend_job_lease(uuid, text, integer),
    public.job_queue_stats(),
    public.retry_failed_jobs(uuid[], timestamptz)
to service_role;
