"""Enforcement: violations become actions (plan, pure) written back into the CRM exactly once (execute, edge)."""
