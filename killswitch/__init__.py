"""killswitch: cancel every open order, inside the rate limit, and prove it."""
