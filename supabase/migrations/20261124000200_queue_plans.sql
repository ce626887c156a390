-- The queue's functions, rewritten so that their plans do not depend on the planner's statistics.
--
-- A queue's table lies to the planner: autovacuum last looked when the queue was empty (or all
-- pending), and then a burst arrives. Told that no job is 'processing', PostgreSQL 17 planned
-- complete_jobs as a walk of a whole partial index, filtering on the worker, with the batch's ids
-- checked against every entry it met; claim_jobs' "is an earlier job of this channel open?" became
-- an anti-join reading the channel index end to end. Each was right for the empty table the
-- statistics described and cost tens of milliseconds on the real one: a drain of 33,000 jobs spent
-- 0.26 to 0.69 ms of database CPU per job instead of 0.12.
--
-- So every statement here has one reasonable plan whatever the statistics say:
-- - Each partial index is the only one whose condition a query that should use it implies. The
--   indexes used to nest (the open jobs' index held every pending and every processing job), and
--   a planner told that both were empty would as soon walk the wrong one end to end.
-- - A job named by id is found by id alone (and the worker holding it), never with a condition
--   that makes a partial index look like a way to find it. That needs "holds a lease" to mean
--   "is processing", which a constraint now guarantees.
-- - A probe of a channel is a subquery with LIMIT 1 on that channel (a lookup per channel), never
--   a join the planner may turn into a scan.

-- A job holds a lease exactly while it is processing. Jobs left 'processing' by something before
-- the queue have no lease and so could never expire; they get one that has already run out. Jobs
-- a worker PATCHed out of 'processing' kept theirs; it ends. The guard would refuse to touch the
-- complete and failed ones among them, and this changes no job's state, so it is set aside.
alter table public.jobs disable trigger jobs_guard_transition;
update public.jobs
set locked_by = coalesce(locked_by, 'unknown (processing before the queue)'),
    locked_until = coalesce(locked_until, now())
where status = 'processing' and (locked_by is null or locked_until is null);
update public.jobs
set locked_by = null, locked_until = null
where status <> 'processing' and (locked_by is not null or locked_until is not null);
alter table public.jobs enable trigger jobs_guard_transition;

-- Leaving 'processing' by any path (a PATCH from a worker that bypasses complete_jobs) ends the
-- lease, so the constraint below never refuses a legitimate transition.
create or replace function public.jobs_guard_transition()
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
    if new.status <> 'processing' then
        new.locked_by := null;
        new.locked_until := null;
    end if;
    new.updated_at := now();
    return new;
end;
$$;

alter table public.jobs add constraint jobs_lease_held
    check ((status = 'processing') = (locked_by is not null and locked_until is not null));

-- Leases, found by `locked_until` alone: a condition no query for pending or open jobs implies.
drop index public.jobs_lease_idx;
create index jobs_lease_idx on public.jobs (locked_until) where locked_until is not null;
-- The open jobs of each channel. Queries that want it name the channel (`source_channel_id = …`,
-- `> …`), which implies the second condition; the scan for due jobs (`status = 'pending'`) does
-- not, and so can only use jobs_claim_idx.
drop index public.jobs_channel_open_idx;
create index jobs_channel_open_idx on public.jobs (source_channel_id, received_at, id)
    where status in ('pending', 'processing') and source_channel_id is not null;

-- Locks up to `wanted` of `candidates` (in their order) that are still pending, skipping any
-- another transaction has locked, and returns their ids. Each is fetched by id alone, and whether
-- it is still pending is asked of the row as locked (a claim that committed meanwhile has made it
-- processing). The LIMIT stops the walk, so no candidate beyond those taken is locked.
create function public.jobs_lock_pending(candidates uuid[], wanted integer)
returns uuid[]
language plpgsql
volatile
security invoker
set search_path = ''
as $$
begin
    return array(
        select l.id
        from unnest(candidates) as c (id)
        cross join lateral (
            select p.id, p.status
            from public.jobs as p
            where p.id = c.id
            -- A fence: without it the planner moves `status = 'pending'` in here, where a partial
            -- index on pending jobs then looks like a way to find the id.
            limit 1
            for update skip locked
        ) as l
        where l.status = 'pending'
        limit wanted
    );
end;
$$;

revoke execute on function public.jobs_lock_pending(uuid[], integer) from public, anon, authenticated;
grant execute on function public.jobs_lock_pending(uuid[], integer) to service_role;

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

    -- Pending jobs whose turn has come: due (run_at has passed) and the first open job of their
    -- channel in arrival order. Because a claimed job stays open (processing), the next job of
    -- its channel fails that test for every other claim until it is complete or failed.
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

-- A job a worker holds is found by its id and the worker alone: holding a lease means processing.
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
    from jsonb_to_recordset(jobs) as c (id uuid, result jsonb)
    where j.id = c.id and j.locked_by = worker
    returning j.id;
$$;

create or replace function public.fail_job(
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
        last_error = coalesce(fail_job.error, 'failed without an error message')
    where j.id = fail_job.id and j.locked_by = fail_job.worker
    returning j.status;
$$;

create or replace function public.extend_job_lease(id uuid, worker text, lease_seconds integer)
returns boolean
language sql
volatile
security invoker
set search_path = ''
as $$
    with extended as (
        update public.jobs as j
        set locked_until = now() + make_interval(secs => least(greatest(lease_seconds, 1), 86400))
        where j.id = extend_job_lease.id and j.locked_by = extend_job_lease.worker
        returning j.id
    )
    select exists (select from extended);
$$;
