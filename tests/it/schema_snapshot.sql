-- The schema as the migrations leave it, rendered from the catalogs in a fixed order: what
-- supabase/schema.sql holds, and what the test that keeps it true compares it with. (The stack's
-- PostgreSQL has no pg_dump, and a dump would carry its version and restrict keys.)
with objects as (
    -- Tables: columns in order, then RLS.
    select n.nspname as schema, 1 as kind, c.relname::text as name, 0 as part,
           format(E'create table %I.%I (\n%s\n);', n.nspname, c.relname, (
               select string_agg(format('    %I %s%s%s%s', a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
                          case when a.attgenerated = 's' then format(' generated always as %s stored', pg_catalog.pg_get_expr(d.adbin, d.adrelid))
                               when d.adbin is not null then ' default ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid) else '' end,
                          case when a.attnotnull then ' not null' else '' end, ''), E',\n' order by a.attnum)
               from pg_catalog.pg_attribute as a
               left join pg_catalog.pg_attrdef as d on d.adrelid = a.attrelid and d.adnum = a.attnum
               where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped))
           || case when c.relrowsecurity then format(E'\nalter table %I.%I enable row level security;', n.nspname, c.relname) else '' end
           as text
    from pg_catalog.pg_class as c join pg_catalog.pg_namespace as n on n.oid = c.relnamespace
    where n.nspname in ('public', 'ingest_private') and c.relkind = 'r'
    union all
    -- Constraints.
    select n.nspname, 1, c.relname::text, 1,
           format('alter table %I.%I add constraint %I %s;', n.nspname, c.relname, k.conname, pg_catalog.pg_get_constraintdef(k.oid))
    from pg_catalog.pg_constraint as k
    join pg_catalog.pg_class as c on c.oid = k.conrelid join pg_catalog.pg_namespace as n on n.oid = c.relnamespace
    where n.nspname in ('public', 'ingest_private')
    union all
    -- Indexes that no constraint made.
    select n.nspname, 1, t.relname::text, 2, pg_catalog.pg_get_indexdef(i.indexrelid) || ';'
    from pg_catalog.pg_index as i
    join pg_catalog.pg_class as t on t.oid = i.indrelid join pg_catalog.pg_namespace as n on n.oid = t.relnamespace
    where n.nspname in ('public', 'ingest_private')
      and not exists (select 1 from pg_catalog.pg_constraint as k where k.conindid = i.indexrelid)
    union all
    -- Triggers.
    select n.nspname, 1, c.relname::text, 3, pg_catalog.pg_get_triggerdef(g.oid) || ';'
    from pg_catalog.pg_trigger as g
    join pg_catalog.pg_class as c on c.oid = g.tgrelid join pg_catalog.pg_namespace as n on n.oid = c.relnamespace
    where n.nspname in ('public', 'ingest_private') and not g.tgisinternal
    union all
    -- Table grants (the owner's own left out).
    select n.nspname, 1, c.relname::text, 4,
           format('grant %s on table %I.%I to %s;', string_agg(lower(x.privilege_type), ', ' order by x.privilege_type),
                  n.nspname, c.relname, pg_catalog.pg_get_userbyid(x.grantee))
    from pg_catalog.pg_class as c join pg_catalog.pg_namespace as n on n.oid = c.relnamespace,
         lateral pg_catalog.aclexplode(c.relacl) as x
    where n.nspname in ('public', 'ingest_private') and c.relkind = 'r' and x.grantee <> c.relowner
    group by n.nspname, c.relname, x.grantee
    union all
    -- Functions, each with who may run it.
    select n.nspname, 2, p.proname || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')', 0,
           rtrim(pg_catalog.pg_get_functiondef(p.oid), E'\n') || E';\n' || coalesce((
               select string_agg(format('grant execute on function %I.%I(%s) to %s;', n.nspname, p.proname,
                                        pg_catalog.pg_get_function_identity_arguments(p.oid),
                                        case when x.grantee = 0 then 'public' else pg_catalog.pg_get_userbyid(x.grantee) end),
                                 E'\n' order by pg_catalog.pg_get_userbyid(x.grantee))
               from pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) as x
               where x.grantee <> p.proowner), '-- no one but the owner may run it')
    from pg_catalog.pg_proc as p join pg_catalog.pg_namespace as n on n.oid = p.pronamespace
    where n.nspname in ('public', 'ingest_private')
)
select text from objects order by schema desc, kind, name, part, text;
