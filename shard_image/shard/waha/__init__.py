"""A WAHA-compatible API (https://waha.devlike.pro) beside chatscale's own: WAHA's clients reach an
autoscaled fleet by changing their base URL. nginx serves it on its own port (`nginx.waha_listen`)
and passes it to the shards under the /waha prefix, where routes.py answers it."""
