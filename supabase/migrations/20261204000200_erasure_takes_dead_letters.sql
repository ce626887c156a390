-- An erased user's dead letters go with them. A dead letter keeps the message whole (body,
-- phone, ids), and `dlq replay` would otherwise bring back the user and the job an erasure
-- request took.
--
-- A letter is the user's when one of the params that name a sender (From, Author,
-- ExternalUserId, ParentExternalUserId) is one of the user's addresses, as sent or behind a
-- channel prefix (`whatsapp:`, `sms:`): the phone and every identity linked to the user. Letters
-- kept as JSON text (a NUL in a param) are searched for the address as a JSON string. Before the
-- delete, so the identities are still there to read; dlq_jobs is scanned, which an erasure can
-- afford.
create function ingest_private.erase_dead_letters()
returns trigger
language plpgsql
security invoker
set search_path = ''
as $$
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
$$;

revoke execute on function ingest_private.erase_dead_letters() from public, anon, authenticated;

create trigger users_erase_dead_letters
    before delete on public.users
    for each row execute function ingest_private.erase_dead_letters();
