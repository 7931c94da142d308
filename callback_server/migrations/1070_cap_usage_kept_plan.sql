-- guard_cap_usage (1040) keeps its generic plan. Its query reads p_scopes through unnest(),
-- which a generic plan counts as 100 rows and a custom one as the array's length, so the
-- plan cache (plan_cache_mode auto) chose a custom plan, planned again, at every call: the
-- worker's claim and every leg's admission (guard.store.admission_ctes) each paid for
-- planning its union of four scans and five subqueries a scope. Called alone on one
-- connection, 2,000 calls: 0.155-0.165 -> 0.050 ms a call with two scopes, 0.135-0.140 ->
-- 0.030 ms with NULL (every scope). Its tables hold a row a scope and shard (guard_spend a
-- day more), and the NULL call reads them whole, so sequential scans stay allowed.
ALTER FUNCTION guard_cap_usage(text[], date) SET plan_cache_mode = force_generic_plan;
