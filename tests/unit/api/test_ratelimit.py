from api.ratelimit import RateLimiter


def test_budget_is_per_tenant_and_route_class_and_resets_each_minute():
    rl = RateLimiter(per_minute=2)
    t0 = 1_800_000_000.0
    assert rl.hit("t1", "events_write", t0).allowed
    assert rl.hit("t1", "events_write", t0).remaining == 0
    denied = rl.hit("t1", "events_write", t0)
    assert not denied.allowed and "Retry-After" in denied.headers()
    assert rl.hit("t1", "events_read", t0).allowed  # other route class
    assert rl.hit("t2", "events_write", t0).allowed  # other tenant
    assert rl.hit("t1", "events_write", t0 + 60).allowed  # next window
