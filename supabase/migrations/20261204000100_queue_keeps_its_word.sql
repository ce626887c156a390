-- The queue keeps its word on every path, under concurrency and re-entry:
-- - A job is handed out only when its channel has no job processing and it is the channel's
--   earliest open job, and only once its run_at has come. The candidates a claim finds are read
--   from its snapshot; another claim may have failed one with a backoff, or another job of the
--   channel may have come back (retry_failed_jobs, a dlq replay, a late spool replay), since. So
--   each candidate is asked again once the claim holds its channel (a transaction-scoped advisory
--   lock, tried, never waited for) and its row: in a statement of its own, which sees every claim
--   that committed before.
-- - A heartbeat never shortens a lease, and refuses a lease it cannot read, as claim_jobs does.
-- - Out of `failed` only through retry_failed_jobs: it runs as the table's owner, and the guard
--   lets failed -> pending through for the owner alone. A caller cannot switch that on with
--   set_config, and a session that never set anything is refused too (current_setting of a
--   setting never defined is NULL, and IF NULL does not raise: the guard this replaces let such
--   a PATCH through).
-- - complete_jobs takes each id once (its first result), and skips ids that are not ids rather
--   than failing the whole call.

-- One channel's processing job, found without reading its backlog.
create index jobs_channel_processing_idx on public.jobs (source_channel_id) where status = 'processing';

create or replace function public.jobs_guard_transition()
returns trigger
language plpgsql
set search_path = ''
as $$
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
$$;

create or replace function public.retry_failed_jobs(ids uuid[] default null, since timestamptz default null)
returns bigint
language plpgsql
volatile
security definer
set search_path = ''
as $$
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
$$;

revoke execute on function public.retry_failed_jobs(uuid[], timestamptz) from public, anon, authenticated;
grant execute on function public.retry_failed_jobs(uuid[], timestamptz) to service_role;

-- Locks up to `wanted` of `candidates`, in their order, that may go now, and returns their ids.
-- A candidate is skipped when another claim holds its channel or its row, and when, asked afresh
-- with both held, it is no longer pending, not yet due, not its channel's earliest open job, or
-- its channel has a job processing.
create or replace function public.jobs_lock_pending(candidates uuid[], wanted integer)
returns uuid[]
language plpgsql
volatile
security invoker
set search_path = ''
as $$
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
$$;

create or replace function public.claim_jobs(
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
$$;

-- The first result given for an id counts; an id that is not a UUID is skipped (the answer, the
-- ids completed, shows which were not).
create or replace function public.complete_jobs(worker text, jobs jsonb)
returns setof uuid
language sql
volatile
security invoker
set search_path = ''
as $$
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
$$;

-- A heartbeat extends a lease, never shortens it, and refuses a length it cannot use (a
-- JavaScript heartbeat that computed Number(undefined) sends null).
create or replace function public.extend_job_lease(id uuid, worker text, lease_seconds integer)
returns boolean
language plpgsql
volatile
security invoker
set search_path = ''
as $$
begin
    if lease_seconds is null or lease_seconds not between 1 and 86400 then
        raise exception 'extend_job_lease: lease_seconds must be between 1 and 86400' using errcode = '22023';
    end if;
    update public.jobs as j
    set locked_until = greatest(j.locked_until, now() + make_interval(secs => lease_seconds))
    where j.id = extend_job_lease.id and j.locked_by = extend_job_lease.worker;
    return found;
end;
$$;
