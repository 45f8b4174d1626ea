-- registry hardening: the user a token claims is kept even when it is not a known user.
--
-- with a supabase-style auth schema, user_id references auth.users; a token whose sub is not a
-- row there used to violate that foreign key and fail its whole registry batch. the gateway now
-- writes user_id only for known users (null otherwise) and always records the token's sub here,
-- so the row is kept and the reference is visible as unknown (user_id null, claimed_user_id set).
alter table public.realtime_subscription_registry
    add column if not exists claimed_user_id uuid;

comment on column public.realtime_subscription_registry.claimed_user_id is
    'realtime-gateway: the token''s sub as claimed; user_id is null when auth.users does not know it';
