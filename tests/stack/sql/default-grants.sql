-- The default privileges older hosted projects have: everything `postgres` creates in `public` is
-- granted to anon, authenticated and service_role. Projects created since 2026-05-30 (existing ones
-- since 2026-10-30) have none of this, so migrations must grant what they need.
alter default privileges for role postgres in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges for role postgres in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges for role postgres in schema public grant all on functions to anon, authenticated, service_role;
