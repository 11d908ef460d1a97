"""The live bridge: webhook receiver, durable inbox, worker, scheduler and the daemon that runs them (issue 9)."""
