-- Superseded: the current ingest_batch is in 20261123000300_ingest_jobs.sql (users upsert, then
-- ingest_jobs), and ingest_jobs' in 20261124000100_job_queue.sql; supabase/README.md keeps the map.
-- What follows describes this migration's design as it was applied, and is kept as history: an
-- applied migration's statements are never changed.
--
-- ingest_batch: one round trip per batch of messages, and cheaper than ingest_messages.
--
-- It does what ingest_messages did: create the users that are new, give a name to a user who has
-- none, and insert the jobs, skipping any MessageSid that already has one. What changed is its cost
-- through PostgREST, measured one message per call with benches/throughput.rs:
--   * Its one parameter is unnamed, so PostgREST passes the request body to it as it is, rather
--     than parsing it into a record to pick out a named argument.
--   * It returns void, which PostgREST answers with 204 and no body: cheaper than shaping even one
--     returned value into JSON.
--   * Users and jobs are one statement, and users one INSERT: ON CONFLICT DO UPDATE names a
--     nameless user in the same pass that creates the new ones, where ingest_messages needed a
--     separate UPDATE.
-- Which messages were duplicates is rare news (a Twilio retry, a spool replay), so it comes back
-- only when there is some: in the response header X-Ingest-Duplicates, as the zero-based positions
-- in the batch whose MessageSid already had a job before this call, comma-separated.
--
-- ingest_messages stays, so that a service still running the previous release keeps working while
-- this migration is pushed ahead of `fly deploy`. A later migration can drop it.

create function public.ingest_batch(jsonb)
returns void
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
    messages alias for $1;
    written text[];
    duplicates text;
begin
    -- One statement: its parts share one executor start and one snapshot. The jobs' foreign key
    -- checks run at the end of the statement, so they see the users it creates.
    with named as (
        -- An existing user's row stays locked until commit even when the WHERE leaves it
        -- unchanged, so two batches for the same user take turns; sorted, so they lock in the same
        -- order and cannot deadlock. The lock is FOR NO KEY UPDATE, which the foreign key checks
        -- (FOR KEY SHARE) do not wait on.
        insert into public.users as u (phone_number, first_name)
        select m.user_phone, max(m.first_name)
        from jsonb_to_recordset(messages) as m (user_phone text, first_name text)
        group by m.user_phone
        order by m.user_phone
        on conflict (phone_number) do update
            set first_name = excluded.first_name
            where u.first_name is null and excluded.first_name is not null
    ),
    inserted as (
        -- Sorted too: two batches holding the same two MessageSids (a retry racing its original)
        -- would otherwise wait on each other's unique-index entries.
        insert into public.jobs (message_sid, user_id, user_phone, source_type, source_channel_id, content_type, payload)
        select m.message_sid, m.user_phone, m.user_phone, m.source_type, m.source_channel_id, m.content_type, m.payload
        from jsonb_to_recordset(messages) as m (
            message_sid text, user_phone text, source_type text, source_channel_id text, content_type text, payload jsonb
        )
        order by m.message_sid
        on conflict (message_sid) do nothing
        returning message_sid
    )
    select array_agg(message_sid) into written from inserted;

    if coalesce(cardinality(written), 0) < jsonb_array_length(messages) then
        -- Worked out from what RETURNING said, not by reading jobs back: a query on jobs here would
        -- be planned once per connection, and a plan made while the table was small (a sequential
        -- scan) would be kept as it grew. A MessageSid twice in one batch is written once and so is
        -- not reported; the caller knows its second occurrence is a repeat.
        select string_agg((m.position - 1)::text, ',' order by m.position)
        into duplicates
        from jsonb_array_elements(messages) with ordinality as m (message, position)
        where m.message ->> 'message_sid' <> all(coalesce(written, '{}'));
        perform set_config(
            'response.headers',
            json_build_array(json_build_object('X-Ingest-Duplicates', coalesce(duplicates, '')))::text,
            true
        );
    end if;
end;
$$;

revoke execute on function public.ingest_batch(jsonb) from public, anon, authenticated;
grant execute on function public.ingest_batch(jsonb) to service_role;
