-- What a hosted Supabase project has before any migration, run once by the superuser
-- (`supabase_admin`, as on a hosted project) right after initdb.
--
-- `postgres`, which the CLI and the dashboard connect as, is not a superuser: it owns the database
-- and `public`, creates the project's objects, and may create roles and bypass RLS, as on hosted.

create role postgres login createrole createdb replication bypassrls password 'postgres';
create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;
create role authenticator login noinherit password 'authenticator';
grant anon, authenticated, service_role to authenticator;
grant anon, authenticated, service_role to postgres with admin option;

alter database postgres owner to postgres;
alter schema public owner to postgres;
grant usage on schema public to anon, authenticated, service_role;

create schema extensions;
grant usage on schema extensions to postgres, anon, authenticated, service_role;

create schema auth;
grant usage on schema auth to postgres, anon, authenticated, service_role;
create function auth.jwt() returns jsonb language sql stable as
  $$ select coalesce(nullif(current_setting('request.jwt.claims', true), ''), '{}')::jsonb $$;
create function auth.uid() returns uuid language sql stable as
  $$ select nullif(auth.jwt() ->> 'sub', '')::uuid $$;
create function auth.role() returns text language sql stable as
  $$ select nullif(auth.jwt() ->> 'role', '') $$;

-- Hosted projects reload PostgREST's schema cache after every DDL statement, so a migration pushed
-- while PostgREST runs is live at once: these are Supabase's `pgrst_ddl_watch` and
-- `pgrst_drop_watch` event triggers (event triggers need a superuser, so they are made here).
create function extensions.pgrst_ddl_watch() returns event_trigger language plpgsql as $$
declare
    cmd record;
begin
    for cmd in select * from pg_event_trigger_ddl_commands() loop
        if cmd.command_tag in (
            'CREATE SCHEMA', 'ALTER SCHEMA',
            'CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE',
            'CREATE FOREIGN TABLE', 'ALTER FOREIGN TABLE',
            'CREATE VIEW', 'ALTER VIEW',
            'CREATE MATERIALIZED VIEW', 'ALTER MATERIALIZED VIEW',
            'CREATE FUNCTION', 'ALTER FUNCTION',
            'CREATE TRIGGER',
            'CREATE TYPE', 'ALTER TYPE',
            'CREATE RULE',
            'COMMENT'
        )
        -- Not for temporary objects.
        and cmd.schema_name is distinct from 'pg_temp' then
            notify pgrst, 'reload schema';
        end if;
    end loop;
end;
$$;

create function extensions.pgrst_drop_watch() returns event_trigger language plpgsql as $$
declare
    obj record;
begin
    for obj in select * from pg_event_trigger_dropped_objects() loop
        if obj.object_type in (
            'schema', 'table', 'foreign table', 'view', 'materialized view', 'function', 'trigger', 'type', 'rule'
        )
        and obj.is_temporary is false then
            notify pgrst, 'reload schema';
        end if;
    end loop;
end;
$$;

create event trigger pgrst_ddl_watch on ddl_command_end execute procedure extensions.pgrst_ddl_watch();
create event trigger pgrst_drop_watch on sql_drop execute procedure extensions.pgrst_drop_watch();
