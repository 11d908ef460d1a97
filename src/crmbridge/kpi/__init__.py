"""Plans and KPIs: plan files and portal plans, facts from the cache, snapshots, motivation and reports."""
