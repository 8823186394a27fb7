-- A HASH and the clock of the server that holds it, in one command (the sidecar's mirrors of the pool's
-- refused keys and outages: their entries carry times on that clock).
-- KEYS[1] the HASH. Returns {TIME's reply, the HASH's fields and values, flat}.

return {redis.call('TIME'), redis.call('HGETALL', KEYS[1])}
